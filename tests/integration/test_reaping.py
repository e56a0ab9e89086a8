"""xinfd as PID 1 of a PID namespace (a container with no init) and as an ordinary child process.

A replica leader that dies leaves its children to the daemon (its subreaper, or PID 1): they must be killed
with the replica's group and reaped, or the stop waits for a group of zombies forever (the model stays
"READY", restarts and terminate hang). Each case runs both ways, with the echo engine's ``fork_grandchild``
(a ``sleep`` child in the replica's process group), and checks the daemon's world afterwards: every process
of the namespace, or every descendant of the daemon, with no zombie among them.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from tests.integration.conftest import Daemon, ProcInfo, pid_namespace_works, proc_info, wait_for
from tests.integration.test_daemon import launch_echo

STOP_GRACE = 3.0  # XINFD_STOP_GRACE_PERIOD of the test daemons (conftest.daemon_env)
BACKOFF = 0.1
HEALTH = {"interval": 0.3, "timeout": 0.5, "threshold": 2}
FAST = {
    "XINFD_RESTART_BACKOFF": str(BACKOFF),
    "XINFERENCE_HEALTH_CHECK_INTERVAL": str(HEALTH["interval"]),
    "XINFERENCE_HEALTH_CHECK_TIMEOUT": str(HEALTH["timeout"]),
    "XINFERENCE_HEALTH_CHECK_FAILURE_THRESHOLD": str(HEALTH["threshold"]),
}
# What the README promises, with these settings: a stop takes at most two grace periods (the leader's, then the
# stragglers'); a restart comes after the backoff; a hang is noticed after `threshold` probes. START is the
# slack for an echo worker to start on a loaded two-core machine.
START = 10.0
STOP_WITHIN = 2 * STOP_GRACE + 2.0
RESTART_WITHIN = 2 * STOP_GRACE + BACKOFF + START
HANG_WITHIN = HEALTH["threshold"] * (HEALTH["interval"] + HEALTH["timeout"]) + RESTART_WITHIN

needs_pid_namespace = pytest.mark.skipif(
    not pid_namespace_works(), reason="unshare --pid --fork --mount-proc is not permitted here"
)
MODES = [
    pytest.param(False, id="child"),
    pytest.param(True, id="pid-namespace", marks=needs_pid_namespace),
]


def echo_replicas(daemon: Daemon) -> list[dict[str, Any]]:
    models = [m for m in daemon.xinfctl_json("list") if m["model_uid"] == "echo"]
    return models[0]["replicas"] if models else []


def children(daemon: Daemon, pid: int) -> list[ProcInfo]:
    return [p for p in daemon.processes() if p.ppid == pid]


def restarted(daemon: Daemon, old_pid: int) -> dict[str, Any] | None:
    (replica,) = echo_replicas(daemon)
    ok = replica["state"] == "READY" and replica["pid"] not in (None, old_pid)
    return replica if ok else None


def assert_only_replicas_left(daemon: Daemon) -> None:
    """The daemon's world holds exactly the ready replicas' leaders and their children, and no zombie."""
    world = daemon.processes()
    assert not [p for p in world if p.state == "Z"], world
    leaders = {daemon.host_pid(r["pid"]) for r in echo_replicas(daemon)}
    assert {p.pid for p in world} == leaders | {p.pid for p in world if p.ppid in leaders}, world


def gone(pid: int) -> bool:
    """Not even a zombie: killed and reaped."""
    return proc_info(pid) is None


def start(make_daemon: Any, pid_namespace: bool, **env: str) -> Daemon:
    daemon: Daemon = make_daemon(env={**FAST, **env}, pid_namespace=pid_namespace).start()
    return daemon


@pytest.mark.parametrize("pid_namespace", MODES)
def test_leader_killed_with_a_child_left_is_restarted_and_the_child_killed(
    make_daemon: Any, pid_namespace: bool
) -> None:
    daemon = start(make_daemon, pid_namespace)
    launch_echo(daemon, "--fork-grandchild", "true", replicas=1)
    (old,) = echo_replicas(daemon)
    leader = daemon.host_pid(old["pid"])
    (child,) = children(daemon, leader)
    killed = time.monotonic()
    os.kill(leader, signal.SIGKILL)  # what the OOM killer does to an engine leader with workers
    new = wait_for(lambda: restarted(daemon, old["pid"]), timeout=RESTART_WITHIN)
    assert time.monotonic() - killed < RESTART_WITHIN
    assert new["restarts"] == 1 and "killed by signal 9" in new["last_exit"]
    wait_for(lambda: gone(child.pid), timeout=2)
    assert_only_replicas_left(daemon)
    assert len(children(daemon, daemon.host_pid(new["pid"]))) == 1  # the new leader's own child


@pytest.mark.parametrize("pid_namespace", MODES)
def test_hung_replica_with_a_child_is_killed_by_the_health_check_and_restarted(
    make_daemon: Any, pid_namespace: bool
) -> None:
    daemon = start(make_daemon, pid_namespace)
    launch_echo(daemon, "--fork-grandchild", "true", replicas=1)
    (old,) = echo_replicas(daemon)
    leader = daemon.host_pid(old["pid"])
    (child,) = children(daemon, leader)
    hung = time.monotonic()
    os.kill(leader, signal.SIGSTOP)
    new = wait_for(lambda: restarted(daemon, old["pid"]), timeout=HANG_WITHIN)
    assert time.monotonic() - hung < HANG_WITHIN
    assert "unhealthy: 2 health checks failed in a row" in new["last_exit"]
    wait_for(lambda: gone(leader) and gone(child.pid), timeout=2)
    assert_only_replicas_left(daemon)


@pytest.mark.parametrize("pid_namespace", MODES)
def test_terminate_returns_and_leaves_no_process(make_daemon: Any, pid_namespace: bool) -> None:
    daemon = start(make_daemon, pid_namespace)
    launch_echo(daemon, "--fork-grandchild", "true", replicas=2)
    family = [p.pid for p in daemon.processes()]
    assert len(family) == 4  # two leaders, a child each
    began = time.monotonic()
    daemon.xinfctl("terminate", "echo", timeout=STOP_WITHIN + 5)
    assert time.monotonic() - began < STOP_WITHIN
    wait_for(lambda: all(gone(pid) for pid in family), timeout=2)
    assert daemon.processes() == []
    assert daemon.stop(signal.SIGTERM) == 0


@pytest.mark.soak
@needs_pid_namespace
def test_soak_fifty_leader_kills_as_pid_1_leave_no_zombie(make_daemon: Any) -> None:
    """50 leader deaths with a child left, as PID 1: every one restarted, every orphan reaped.

    Ten replicas die five times each, all ten at once per round: a replica's restart delay doubles with each
    restart in a row (0.05 s up to 0.8 s here), so one replica killed 50 times would wait minutes for its last
    restarts; killing one replica at a time would make the test as slow as 50 worker start-ups in a row.
    """
    replicas, rounds = 10, 5
    daemon = start(make_daemon, True, XINFD_RESTART_BACKOFF="0.05", XINFD_RESTART_BUDGET=str(rounds + 1),
                   XINFERENCE_HEALTH_CHECK_INTERVAL="5")
    launch_echo(daemon, "--fork-grandchild", "true", replicas=replicas)
    orphans: list[int] = []
    for _ in range(rounds):
        before = {r["label"]: r["pid"] for r in echo_replicas(daemon)}
        assert len(before) == replicas and all(before.values())
        for pid in before.values():
            leader = daemon.host_pid(pid)
            orphans += [p.pid for p in children(daemon, leader)]
            os.kill(leader, signal.SIGKILL)

        def all_back(before: dict[str, int] = before) -> bool:
            now = echo_replicas(daemon)
            return all(r["state"] == "READY" and r["pid"] not in (None, before[r["label"]]) for r in now)

        wait_for(all_back, timeout=RESTART_WITHIN + replicas, interval=0.1)
    assert len(orphans) == replicas * rounds
    wait_for(lambda: all(gone(pid) for pid in orphans), timeout=2)
    assert_only_replicas_left(daemon)
    assert all(r["restarts"] == rounds for r in echo_replicas(daemon))
    assert daemon.log().count("reaped adopted process") >= replicas * rounds
    assert daemon.stop(signal.SIGTERM) == 0
