"""The CPU thread budget: how many threads each CPU replica runs, and on which cores.

Every CPU library a replica loads (torch's intra- and inter-op pools, OpenMP, MKL, OpenBLAS, llama.cpp) starts
by default with one thread per core of the machine. Two such replicas on two cores oversubscribe the machine
twice over, and with OpenMP's spin-waiting each request pays for the other replica's threads. The slot table
(``xinfd.gpus.SlotTable``) therefore owns the cores too: the replicas that run on the CPU share the cores the
daemon may use (``os.sched_getaffinity``), and each gets a ``CpuShare`` — a thread count, and a disjoint set
of cores to be pinned to when there are enough free ones.

Policy (the decisions ``split`` makes, unit-tested in ``tests/unit/test_cpus.py``):

* N CPU replicas on C cores get ``C // N`` threads each, the first ``C % N`` of them one more, never fewer
  than one; so 3 replicas on 8 cores run 3 + 3 + 2 threads on disjoint cores, 5 on 4 cores run 1 thread each.
* A scale-up re-splits over every CPU replica, the running ones included, but only the new replicas take the
  new share: a running process cannot shrink its thread pools, so existing replicas keep theirs until they
  are relaunched (a scale down then up, or a new launch), and the new ones are not pinned if the running ones
  still hold every core.
* An operator's count (a launch's ``cpu_threads``, its ``--env OMP_NUM_THREADS``, or the daemon setting
  ``cpu_threads_per_replica``) replaces the split for those replicas; cores are still chosen so that they do
  not overlap when enough are free.
* A replica is pinned only to cores no other CPU replica holds; when that is not possible it is left to the
  kernel's scheduler (``cores == ()``), which balances better than overlapping pins, and its OpenMP threads
  wait passively (``thread_env``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The variables the CPU libraries read at import; the daemon sets them in each CPU replica's environment
# (unless the launch's --env sets one), so libraries that never see the replica context still follow it.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuShare:
    """One CPU replica's part of the cores: its thread count, the cores it is pinned to (() = not pinned),
    and why, in the words ``xinfctl cpus`` shows."""

    threads: int
    cores: tuple[int, ...] = ()
    reason: str = ""


def daemon_cpus() -> tuple[int, ...]:
    """The cores the daemon may run on (its affinity mask: taskset, cpusets, a container's cpuset)."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return tuple(range(os.cpu_count() or 1))


def split_sizes(cores: int, replicas: int) -> list[int]:
    """Threads per replica when ``replicas`` replicas share ``cores`` cores evenly (the remainder to the first)."""
    base, extra = divmod(max(cores, 1), replicas)
    return [max(1, base + (1 if i < extra else 0)) for i in range(replicas)]


def format_cores(cores: Iterable[int]) -> str:
    """``0-3,6`` (the kernel's list format, as in ``Cpus_allowed_list``), or ``any`` for no pinning."""
    ordered = sorted(set(cores))
    if not ordered:
        return "any"
    runs: list[str] = []
    start = prev = ordered[0]
    for core in [*ordered[1:], None]:
        if core is not None and core == prev + 1:
            prev = core
            continue
        runs.append(f"{start}-{prev}" if prev != start else str(start))
        if core is not None:
            start = prev = core
    return ",".join(runs)


def split(
    cpus: Sequence[int], held: Sequence[CpuShare], new: int, *, threads: int | None = None, why: str = ""
) -> list[CpuShare]:
    """The shares of ``new`` replicas joining the CPU replicas that hold ``held``.

    ``threads`` is an operator's count for each new replica (``why`` says whose), None for the split.
    """
    if new <= 0:
        return []
    total = len(held) + new
    if threads is None:
        sizes = split_sizes(len(cpus), total)[len(held):]
        why = f"split: {total} CPU replica(s) share {len(cpus)} core(s)"
    else:
        sizes = [threads] * new
    load = {core: 0 for core in cpus}
    unpinned = False
    for share in held:
        unpinned = unpinned or not share.cores
        for core in share.cores:
            load[core] = load.get(core, 0) + 1
    shares = []
    for size in sizes:
        # A replica left to the scheduler may run on any core, so with one of those no core is free.
        free = [] if unpinned else [core for core in cpus if load.get(core, 0) == 0]
        if size <= len(free):
            cores = tuple(free[:size])
            for core in cores:
                load[core] += 1
            where = f"cores {format_cores(cores)}"
        else:
            cores, unpinned = (), True
            where = "not pinned: no free cores for a disjoint set"
        shares.append(CpuShare(threads=size, cores=cores, reason=f"{why}; {size} thread(s), {where}"))
    return shares


def thread_env(share: CpuShare, keep: Mapping[str, str]) -> dict[str, str]:
    """The thread variables of ``share`` for a replica's environment, except those set in ``keep`` (--env).

    A replica that is not pinned shares its cores with other replicas, so its OpenMP threads must sleep while
    they wait instead of spinning (``OMP_WAIT_POLICY=PASSIVE``): spinning threads of one replica steal the cores
    another one computes on. Measured here with a tiny Llama, 2 threads on 2 busy cores: 0.4 req/s spinning,
    8.8 req/s passive. Pinned replicas own their cores and keep OpenMP's default (spin, then sleep).
    """
    env = {name: str(share.threads) for name in THREAD_ENV}
    if not share.cores:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return {name: value for name, value in env.items() if name not in keep}


def env_thread_count(env: Mapping[str, str]) -> int | None:
    """The launch's ``--env OMP_NUM_THREADS`` as a count (None when absent or not a positive integer)."""
    raw = env.get("OMP_NUM_THREADS", "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


def cpu_snapshot(cpus: Sequence[int], shares: Sequence[tuple[str, CpuShare]], *, per_replica: int) -> dict[str, Any]:
    """The JSON of ``GET /v1/gpus``'s ``cpus``: the daemon's cores and each labelled replica's share."""
    return {
        "cores": list(cpus),
        "cores_list": format_cores(cpus),
        "cpu_threads_per_replica": per_replica,
        "replicas": [
            {
                "label": label,
                "threads": share.threads,
                "cores": list(share.cores),
                "cores_list": format_cores(share.cores),
                "reason": share.reason,
            }
            for label, share in shares
        ],
    }
