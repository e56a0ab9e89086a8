"""The CPU thread budget: how many threads each CPU replica runs, and on which cores.

Every CPU library a replica loads (torch's intra- and inter-op pools, OpenMP, MKL, OpenBLAS, llama.cpp) starts
by default with one thread per core of the machine. Two such replicas on two cores oversubscribe the machine
twice over, and with OpenMP's spin-waiting each request pays for the other replica's threads. The slot table
(``xinfd.gpus.SlotTable``) therefore owns the cores too: the replicas that run on the CPU share the cores the
daemon may use (``os.sched_getaffinity``, cut to its cgroup's CPU quota: ``cpu_budget``), and each gets a
``CpuShare`` — a thread count, and a disjoint set of cores to be pinned to when there are enough free ones.

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
* In a container with a CPU quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``)
  the affinity mask still lists every core of the host, but the replicas may use only quota/period of them:
  the budget is the first ``ceil(quota / period)`` cores of the mask when that is fewer. N threads pinned to
  N cores then use at most the quota, instead of the host's core count in threads being throttled by it.
* A replica is pinned only to cores no other CPU replica holds; when that is not possible it is left to the
  kernel's scheduler (``cores == ()``), which balances better than overlapping pins, and its OpenMP threads
  wait passively (``thread_env``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
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


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuQuota:
    """A cgroup's CPU quota as whole cores (``ceil(quota / period)``, at least 1), and where it was read."""

    cpus: int
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuBudget:
    """The cores the CPU replicas share, and where their number comes from (shown by ``xinfctl cpus``)."""

    cores: tuple[int, ...]
    source: str


def _own_cgroups(root: Path) -> list[tuple[str, str]]:
    """(controllers, path) of each line of ``/proc/self/cgroup`` ("0::/a/b" on v2, "4:cpu,cpuacct:/a" on v1)."""
    try:
        text = (root / "proc/self/cgroup").read_text()
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        _, _, rest = line.partition(":")
        controllers, sep, path = rest.partition(":")
        if sep and path.startswith("/"):
            rows.append((controllers, path))
    return rows


def _ancestors(mount: Path, path: str) -> list[Path]:
    """The cgroup directories from ``path`` up to the mount's root. A limit on any of them applies, and in a
    container without a cgroup namespace the host's path is absent and the mount's root is the container's."""
    parts = [p for p in path.split("/") if p and p != ".."]
    return [mount.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _quota(quota: str, period: str, source: str) -> CpuQuota | None:
    """``ceil(quota / period)``; None for no limit ("max", -1) or anything unreadable."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return CpuQuota(cpus=max(1, math.ceil(q / p)), source=source) if q > 0 and p > 0 else None


def _v1_quotas(cgroup_fs: Path, controllers: str, path: str) -> Iterator[CpuQuota]:
    for mount in dict.fromkeys([cgroup_fs / controllers, cgroup_fs / "cpu"]):  # "cpu,cpuacct", or its link
        for directory in _ancestors(mount, path):
            quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
            if quota is not None and period is not None:
                shown = f"cgroup v1 cpu.cfs_quota_us {quota} / cpu.cfs_period_us {period} in {directory}"
                if (limit := _quota(quota, period, shown)) is not None:
                    yield limit


def _v2_quotas(cgroup_fs: Path, path: str) -> Iterator[CpuQuota]:
    for directory in _ancestors(cgroup_fs, path):
        text = _read(directory / "cpu.max")  # "max 100000" (no limit) or "200000 100000"
        if text is not None and len(text.split()) == 2:
            quota, period = text.split()
            if (limit := _quota(quota, period, f"cgroup v2 cpu.max '{text}' in {directory}")) is not None:
                yield limit


def cgroup_cpu_quota(root: Path = Path("/")) -> CpuQuota | None:
    """The tightest CPU quota of the process's own cgroup and its ancestors, or None without one.

    ``root`` is where ``proc/self/cgroup`` and ``sys/fs/cgroup`` are found (a temp dir in tests). cgroup v1's
    ``cpu`` controller is looked for at ``sys/fs/cgroup/<controllers>`` and ``sys/fs/cgroup/cpu`` (where
    systemd and container runtimes mount it), v2 at ``sys/fs/cgroup``. A host that mounts both (hybrid) has
    the cpu controller on v1 when ``/proc/self/cgroup`` names it there, and then only v1 is read.
    """
    cgroup_fs = root / "sys/fs/cgroup"
    own = _own_cgroups(root)
    v1 = [(controllers, path) for controllers, path in own if "cpu" in controllers.split(",")]
    if v1:
        found = [q for controllers, path in v1 for q in _v1_quotas(cgroup_fs, controllers, path)]
    else:
        found = [q for controllers, path in own if controllers == "" for q in _v2_quotas(cgroup_fs, path)]
    return min(found, key=lambda q: q.cpus, default=None)


def cpu_budget(*, root: Path = Path("/"), affinity: Sequence[int] | None = None) -> CpuBudget:
    """The cores the CPU replicas share: the affinity mask (``affinity``: the daemon's own), or its first
    ``ceil(quota / period)`` cores when the cgroup's CPU quota allows fewer (see the module docstring)."""
    cores = tuple(sorted(daemon_cpus() if affinity is None else affinity))
    mask = f"the affinity mask ({len(cores)} core(s))"
    quota = cgroup_cpu_quota(root)
    if quota is None:
        return CpuBudget(cores=cores, source=mask)
    if quota.cpus >= len(cores):
        return CpuBudget(cores=cores, source=f"{mask}; the CPU quota allows {quota.cpus} ({quota.source})")
    return CpuBudget(cores=cores[: quota.cpus],
                     source=f"the CPU quota: {quota.cpus} of the {len(cores)} core(s) of the affinity mask "
                            f"({quota.source})")


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


def cpu_snapshot(
    cpus: Sequence[int], shares: Sequence[tuple[str, CpuShare]], *, per_replica: int, source: str = ""
) -> dict[str, Any]:
    """The JSON of ``GET /v1/gpus``'s ``cpus``: the daemon's cores, where their number comes from
    (``CpuBudget.source``), and each labelled replica's share."""
    return {
        "cores": list(cpus),
        "cores_list": format_cores(cpus),
        "source": source,
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
