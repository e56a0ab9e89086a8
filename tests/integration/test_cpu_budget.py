"""The CPU thread budget end to end: real daemon, real echo workers; each replica's environment and affinity."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.integration.test_daemon import launch_echo
from tests.integration.test_supervision import environ


def allowed_cpus(pid: int) -> str:
    """The kernel's ``Cpus_allowed_list`` of ``pid`` (what ``sched_setaffinity`` set)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


def test_two_cpu_replicas_split_the_cores_and_an_explicit_omp_num_threads_is_kept(make_daemon: Any) -> None:
    daemon = make_daemon(env={"XINFD_CPU_THREADS_PER_REPLICA": "0"}).start()
    cores = sorted(os.sched_getaffinity(0))
    launch_echo(daemon, replicas=2)
    budget = daemon.xinfctl_json("cpus")
    assert budget["cores"] == cores and budget["cpu_threads_per_replica"] == 0
    shares = {r["label"]: r for r in budget["replicas"]}
    assert set(shares) == {"echo-r0", "echo-r1"}
    # An even split: the odd core, if any, goes to the first replica.
    assert [shares["echo-r0"]["threads"], shares["echo-r1"]["threads"]] == [max(1, (len(cores) + 1) // 2),
                                                                            max(1, len(cores) // 2)]
    pids = {r["label"]: r["pid"] for m in daemon.xinfctl_json("list") for r in m["replicas"]}
    for label, share in shares.items():
        env = environ(pids[label])
        assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == str(share["threads"])
        if share["cores"]:
            assert allowed_cpus(pids[label]) == share["cores_list"]
    if len(cores) >= 2:  # enough cores for disjoint sets: each replica is pinned to its own
        first, second = (set(shares[f"echo-r{i}"]["cores"]) for i in (0, 1))
        assert first and second and not first & second and first | second == set(cores)

    model = launch_echo(daemon, "-u", "own", "--env", "OMP_NUM_THREADS", "3", replicas=1)
    pid = model["replicas"][0]["pid"]
    env = environ(pid)
    assert env["OMP_NUM_THREADS"] == "3" and env["MKL_NUM_THREADS"] == "3"
    own = next(r for r in daemon.xinfctl_json("cpus")["replicas"] if r["label"] == "own-r0")
    assert own["threads"] == 3 and "the launch asked for 3 thread(s)" in own["reason"]

    human = daemon.xinfctl("cpus").stdout
    assert "echo-r0" in human and "THREADS" in human and "split between CPU replicas" in human
