"""Health probes of READY replicas: a hung replica is killed and restarted; probes off still catch exits."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import pytest

from tests.unit.test_replicas import FakeReplica, ScriptedSpawner
from xinfd.replicas import ExitInfo, HealthPolicy, ReplicaState, RestartPolicy
from xinfd.types import LaunchSpec, ReadinessProbe


def replica(
    tmp_path: Path, spawner: ScriptedSpawner, health: HealthPolicy, history: list[str], budget: int = 3
) -> FakeReplica:
    async def no_sleep(delay: float) -> None:
        await asyncio.sleep(0)

    spec = LaunchSpec(argv=("worker",), readiness=ReadinessProbe(timeout_s=1, interval_s=0.001))
    return FakeReplica(
        model_uid="m",
        index=0,
        socket_path=tmp_path / "m.sock",
        log_path=tmp_path / "m.log",
        make_spec=lambda: spec,
        env={},
        spawner=spawner,
        stop_grace=0.1,
        sleep=no_sleep,
        restart=RestartPolicy(budget=budget),
        health=health,
        pid_file=tmp_path / "pids" / "m-r0.pid",
        listener=lambda r, old, new, why: history.append(f"{new.value} ({why})"),
    )


async def until(predicate: object, tries: int = 3000) -> None:
    for _ in range(tries):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not met")


async def test_hung_replica_is_killed_after_the_threshold_and_restarted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="xinfd.replicas")
    spawner = ScriptedSpawner([(True, None), (True, None)])
    history: list[str] = []
    r = replica(tmp_path, spawner, HealthPolicy(interval=0.002, timeout=0.01, failure_threshold=3), history)
    await r.start()
    spawner.handles[0].ready = False  # alive but no longer answering: what SIGSTOP looks like from outside
    await until(lambda: r.state is ReplicaState.READY and r.pid == 1001)
    assert spawner.handles[0].signals == [signal.SIGKILL]  # SIGTERM would stay pending on a stopped process
    assert "failed health check 3/3" in caplog.text
    assert r.last_exit == ExitInfo(
        returncode=-9,
        stderr_tail=("pid 1000 says goodbye",),
        cause="unhealthy: 3 health checks failed in a row",
    )
    assert history[2].startswith("BACKOFF (unhealthy: 3 health checks failed in a row; killed by signal 9")
    await r.stop()


async def test_one_failed_probe_below_the_threshold_is_forgiven(tmp_path: Path) -> None:
    spawner = ScriptedSpawner([(True, None)])
    history: list[str] = []
    r = replica(tmp_path, spawner, HealthPolicy(interval=0.002, timeout=0.01, failure_threshold=50), history)
    await r.start()
    spawner.handles[0].ready = False
    await until(lambda: r.health_failures >= 2)
    spawner.handles[0].ready = True
    await until(lambda: r.health_failures == 0)
    assert r.state is ReplicaState.READY and spawner.handles[0].signals == []
    await r.stop()


async def test_disabled_health_checks_never_probe_but_exits_are_still_handled(tmp_path: Path) -> None:
    spawner = ScriptedSpawner([(True, None), (True, None)])
    history: list[str] = []
    r = replica(tmp_path, spawner, HealthPolicy(interval=0.001, failure_threshold=1, enabled=False), history)
    await r.start()
    spawner.handles[0].ready = False
    await asyncio.sleep(0.05)
    assert r.state is ReplicaState.READY and r.pid == 1000  # a hang goes unnoticed with probes off...
    spawner.handles[0].exit(17)
    await until(lambda: r.pid == 1001 and r.state is ReplicaState.READY)  # ...but a crash does not
    await r.stop()


async def test_failed_replica_keeps_exit_status_and_stderr_in_its_snapshot(tmp_path: Path) -> None:
    spawner = ScriptedSpawner([(True, None)] + [(False, 3)] * 5)
    history: list[str] = []
    r = replica(tmp_path, spawner, HealthPolicy(enabled=False), history, budget=2)
    await r.start()
    spawner.handles[0].exit(3)
    await until(lambda: r.state is ReplicaState.FAILED)
    snap = r.snapshot()
    assert snap["state"] == "FAILED" and snap["exit_status"] == 3
    assert snap["stderr_tail"] == ["pid 1002 says goodbye"]
    assert "restart budget (2) exhausted" in snap["failure"]
    assert not (tmp_path / "pids" / "m-r0.pid").exists()  # the group is gone: no orphan to hunt later
