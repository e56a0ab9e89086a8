"""The CPU thread budget's decisions: even splits, scale-ups, operator counts, pinning, the slot table, and the
cgroup CPU quota (fake ``/proc/self/cgroup`` and ``/sys/fs/cgroup`` trees under a temp root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xinfd.cpus import (
    CpuShare,
    cgroup_cpu_quota,
    cpu_budget,
    cpu_snapshot,
    env_thread_count,
    format_cores,
    split,
    split_sizes,
    thread_env,
)
from xinfd.gpus import Placement, SlotTable
from xinfd.types import GpuInfo


def cpu_placements(first: int, count: int) -> list[Placement]:
    return [Placement(replica_index=i, gpu_indices=(), reason="CPU") for i in range(first, first + count)]


@pytest.mark.parametrize(
    ("cores", "replicas", "threads", "pinned"),
    [
        (2, 1, [2], [(0, 1)]),
        (2, 2, [1, 1], [(0,), (1,)]),
        (2, 3, [1, 1, 1], [(0,), (1,), ()]),
        (2, 5, [1] * 5, [(0,), (1,), (), (), ()]),
        (4, 1, [4], [(0, 1, 2, 3)]),
        (4, 2, [2, 2], [(0, 1), (2, 3)]),
        (4, 3, [2, 1, 1], [(0, 1), (2,), (3,)]),
        (4, 5, [1] * 5, [(0,), (1,), (2,), (3,), ()]),
        (8, 1, [8], [tuple(range(8))]),
        (8, 2, [4, 4], [(0, 1, 2, 3), (4, 5, 6, 7)]),
        (8, 3, [3, 3, 2], [(0, 1, 2), (3, 4, 5), (6, 7)]),
        (8, 5, [2, 2, 2, 1, 1], [(0, 1), (2, 3), (4, 5), (6,), (7,)]),
    ],
)
def test_an_even_split_of_the_cores_with_disjoint_pins_while_cores_last(
    cores: int, replicas: int, threads: list[int], pinned: list[tuple[int, ...]]
) -> None:
    shares = split(range(cores), [], replicas)
    assert [s.threads for s in shares] == threads
    assert [s.cores for s in shares] == pinned
    assert all(f"{replicas} CPU replica(s) share {cores} core(s)" in s.reason for s in shares)
    assert ("not pinned" in shares[-1].reason) == (not pinned[-1])


def test_split_sizes_use_every_core_and_never_fall_below_one_thread() -> None:
    for cores in (1, 2, 3, 4, 7, 8, 64):
        for replicas in range(1, 12):
            sizes = split_sizes(cores, replicas)
            assert len(sizes) == replicas and min(sizes) >= 1
            assert sum(sizes) == max(cores, replicas)


def test_a_scale_up_gives_new_replicas_the_new_share_and_existing_ones_keep_theirs() -> None:
    first = split(range(8), [], 2)  # 4 + 4 on 0-3 and 4-7
    added = split(range(8), first, 2)  # 4 replicas on 8 cores: 2 each, but every core is held
    assert [s.threads for s in added] == [2, 2]
    assert [s.cores for s in added] == [(), ()]
    # After a scale-down the freed cores are taken again, disjoint from the replica still running.
    (again,) = split(range(8), first[:1], 1)
    assert (again.threads, again.cores) == (4, (4, 5, 6, 7))


def test_an_unpinned_replica_holds_every_core() -> None:
    held = [CpuShare(threads=1, cores=())]
    assert [s.cores for s in split(range(4), held, 1)] == [()]


def test_an_operator_count_replaces_the_split_and_is_pinned_when_cores_are_free() -> None:
    shares = split(range(4), [], 2, threads=1, why="the launch asked for 1 thread(s)")
    assert [(s.threads, s.cores) for s in shares] == [(1, (0,)), (1, (1,))]
    assert shares[0].reason.startswith("the launch asked for 1 thread(s)")
    wide = split(range(4), [], 2, threads=3, why="x")
    assert [(s.threads, s.cores) for s in wide] == [(3, (0, 1, 2)), (3, ())]


def test_thread_env_keeps_what_the_launch_set_and_reads_omp_num_threads() -> None:
    share = CpuShare(threads=2, cores=(0, 1))
    assert thread_env(share, {}) == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    assert thread_env(share, {"OMP_NUM_THREADS": "3"}) == {"MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    # Not pinned (sharing cores with other replicas): OpenMP threads sleep instead of spinning while they wait.
    unpinned = thread_env(CpuShare(threads=1), {})
    assert unpinned["OMP_WAIT_POLICY"] == "PASSIVE" and unpinned["OMP_NUM_THREADS"] == "1"
    assert "OMP_WAIT_POLICY" not in thread_env(CpuShare(threads=1), {"OMP_WAIT_POLICY": "ACTIVE"})
    assert env_thread_count({"OMP_NUM_THREADS": "3"}) == 3
    assert env_thread_count({"OMP_NUM_THREADS": "0"}) is None
    assert env_thread_count({"OMP_NUM_THREADS": "many"}) is None
    assert env_thread_count({}) is None


def test_format_cores_is_the_kernels_list_format() -> None:
    assert format_cores([0, 1, 2, 3, 6]) == "0-3,6"
    assert format_cores([5]) == "5"
    assert format_cores([1, 3, 4]) == "1,3-4"
    assert format_cores([]) == "any"


def test_the_slot_table_splits_one_launch_at_once_and_counts_other_models() -> None:
    table = SlotTable([], cpus=range(4))
    recorded = table.reserve_all("a", cpu_placements(0, 2))
    assert [(p.cpu.threads, p.cpu.cores) for p in recorded if p.cpu] == [(2, (0, 1)), (2, (2, 3))]
    assert table.placements("a") == recorded
    # Another model joins: 3 CPU replicas on 4 cores gives it 1 thread, not pinned (cores 0-3 are held).
    (third,) = table.reserve_all("b", cpu_placements(0, 1))
    assert third.cpu is not None and (third.cpu.threads, third.cpu.cores) == (1, ())
    table.release("a", 1)
    (fourth,) = table.reserve_all("c", cpu_placements(0, 1))
    assert fourth.cpu is not None and fourth.cpu.cores == ()  # b is unpinned: it may run anywhere
    snapshot = table.cpu_snapshot()
    assert snapshot["cores_list"] == "0-3"
    assert [(r["label"], r["threads"], r["cores_list"]) for r in snapshot["replicas"]] == [
        ("a-r0", 2, "0-1"), ("b-r0", 1, "any"), ("c-r0", 1, "any")]


def test_the_slot_table_applies_the_launch_count_then_the_setting() -> None:
    table = SlotTable([], cpus=range(8), cpu_threads_per_replica=2)
    first = table.reserve_all("a", cpu_placements(0, 2))
    assert [(p.cpu.threads, p.cpu.cores) for p in first if p.cpu] == [(2, (0, 1)), (2, (2, 3))]
    assert first[0].cpu is not None and first[0].cpu.reason.startswith("cpu_threads_per_replica = 2")
    (own,) = table.reserve_all("b", cpu_placements(0, 1), cpu_threads=3)
    assert own.cpu is not None and (own.cpu.threads, own.cpu.cores) == (3, (4, 5, 6))
    assert table.cpu_snapshot()["cpu_threads_per_replica"] == 2


def test_gpu_replicas_get_no_cpu_share() -> None:
    table = SlotTable([GpuInfo(index=0, name="g", memory_mb=1)], cpus=range(2))
    (gpu,) = table.reserve_all("g", table.plan(range(1)))
    assert gpu.gpu_indices == (0,) and gpu.cpu is None
    (cpu,) = table.reserve_all("c", table.plan(range(1), n_gpu=0))
    assert cpu.cpu is not None and cpu.cpu.threads == 2  # the GPU replica is not counted in the split
    with pytest.raises(ValueError, match="already holds"):
        table.reserve_all("c", table.plan(range(1), n_gpu=0))


def fake_cgroups(root: Path, own: str, files: dict[str, str]) -> Path:
    """A root with ``proc/self/cgroup`` = ``own`` and each ``sys/fs/cgroup/<path>`` file of ``files``."""
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(own)
    for path, text in files.items():
        target = root / "sys/fs/cgroup" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text + "\n")
    return root


V1_OWN = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n"


@pytest.mark.parametrize(
    ("own", "files", "cpus"),
    [
        # v2: the process's own cgroup, rounded up, and the tightest of its ancestors.
        ("0::/app.slice/x.service\n", {"app.slice/x.service/cpu.max": "200000 100000"}, 2),
        ("0::/app.slice/x.service\n", {"app.slice/x.service/cpu.max": "150000 100000"}, 2),
        ("0::/app.slice/x.service\n", {"app.slice/x.service/cpu.max": "50000 100000"}, 1),
        ("0::/a/b\n", {"a/b/cpu.max": "max 100000", "a/cpu.max": "100000 100000", "cpu.max": "max 100000"}, 1),
        ("0::/a/b\n", {"a/b/cpu.max": "400000 100000", "a/cpu.max": "300000 100000"}, 3),
        # A container without a cgroup namespace: the host's path is absent, the mount's root is its own cgroup.
        ("0::/system.slice/docker-abc.scope\n", {"cpu.max": "300000 100000"}, 3),
        # v1, with the controllers' own mount or the cpu link, its ancestors too.
        (V1_OWN, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000",
                  "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"}, 3),
        (V1_OWN, {"cpu/docker/cpu.cfs_quota_us": "100000", "cpu/docker/cpu.cfs_period_us": "50000",
                  "cpu/docker/abc/cpu.cfs_quota_us": "-1", "cpu/docker/abc/cpu.cfs_period_us": "100000"}, 2),
    ],
)
def test_the_cgroup_cpu_quota_in_whole_cores(tmp_path: Path, own: str, files: dict[str, str], cpus: int) -> None:
    quota = cgroup_cpu_quota(fake_cgroups(tmp_path, own, files))
    assert quota is not None and quota.cpus == cpus
    assert ("cgroup v1 cpu.cfs_quota_us" if "cpu,cpuacct" in own else "cgroup v2 cpu.max") in quota.source
    assert str(tmp_path / "sys/fs/cgroup") in quota.source  # names the file it read


@pytest.mark.parametrize(
    ("own", "files"),
    [
        ("0::/a\n", {"a/cpu.max": "max 100000", "cpu.max": "max 100000"}),  # v2 "max": no quota
        (V1_OWN, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "-1",
                  "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"}),  # v1 -1: no quota
        (V1_OWN, {"cpu.max": "100000 100000"}),  # hybrid: the cpu controller is on v1, which has no limit
        ("0::/a\n", {}),  # no cpu controller files at all
        ("0::/a\n", {"a/cpu.max": "garbage", "cpu.max": "100000 zero"}),  # unreadable: ignored
        (V1_OWN, {"cpu/docker/abc/cpu.cfs_quota_us": "200000"}),  # a quota without its period
        ("", {"cpu.max": "100000 100000"}),  # an empty /proc/self/cgroup
    ],
)
def test_no_quota_when_the_files_say_max_or_are_missing(tmp_path: Path, own: str, files: dict[str, str]) -> None:
    assert cgroup_cpu_quota(fake_cgroups(tmp_path, own, files)) is None


def test_no_quota_without_proc_self_cgroup(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path) is None


def test_the_budget_is_the_affinity_mask_cut_to_the_quota_and_says_why(tmp_path: Path) -> None:
    root = fake_cgroups(tmp_path, "0::/\n", {"cpu.max": "200000 100000"})
    budget = cpu_budget(root=root, affinity=[4, 5, 6, 7, 0, 1, 2, 3])
    assert budget.cores == (0, 1)
    assert budget.source.startswith("the CPU quota: 2 of the 8 core(s) of the affinity mask (cgroup v2 cpu.max")
    # The split then shares the quota's cores: two replicas, one thread each, on disjoint cores.
    assert [(s.threads, s.cores) for s in split(budget.cores, [], 2)] == [(1, (0,)), (1, (1,))]
    assert cpu_snapshot(budget.cores, [], per_replica=0, source=budget.source)["source"] == budget.source


def test_a_quota_above_the_mask_or_none_leaves_the_mask(tmp_path: Path) -> None:
    wide = cpu_budget(root=fake_cgroups(tmp_path / "wide", "0::/\n", {"cpu.max": "1600000 100000"}),
                      affinity=range(8))
    assert wide.cores == tuple(range(8))
    assert wide.source.startswith("the affinity mask (8 core(s)); the CPU quota allows 16 (cgroup v2")
    plain = cpu_budget(root=fake_cgroups(tmp_path / "plain", "0::/\n", {"cpu.max": "max 100000"}),
                       affinity=range(4))
    assert (plain.cores, plain.source) == ((0, 1, 2, 3), "the affinity mask (4 core(s))")


def test_the_slot_table_shows_where_its_cores_come_from() -> None:
    assert SlotTable([], cpus=range(2)).cpu_snapshot()["source"] == "the caller's list"
    assert SlotTable([]).cpu_snapshot()["source"].startswith(("the affinity mask", "the CPU quota"))
