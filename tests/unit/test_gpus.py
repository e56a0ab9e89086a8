"""The GPU slot table: the spec's placement examples, both strategies, and rejections with their reasons."""

from __future__ import annotations

import pytest

from xinfd.errors import ImpossiblePlacementError, PlacementError
from xinfd.gpus import IDLE_FIRST, PACK_FIRST, Placement, SlotTable, cuda_visible_devices
from xinfd.types import GpuInfo


def gpus(n: int) -> list[GpuInfo]:
    return [GpuInfo(index=i, name=f"GPU-{i}", memory_mb=24000) for i in range(n)]


def place(table: SlotTable, uid: str, replicas: int, **kw: object) -> list[tuple[int, ...]]:
    plan = table.plan(range(replicas), **kw)  # type: ignore[arg-type]
    for p in plan:
        table.reserve(uid, p)
    return [p.gpu_indices for p in plan]


def counts(table: SlotTable) -> list[int]:
    return [len(row["replicas"]) for row in table.snapshot()]


def test_spec_three_replicas_on_one_gpu_all_go_to_gpu_0() -> None:
    table = SlotTable(gpus(1))
    assert place(table, "m", 3) == [(0,), (0,), (0,)]


def test_spec_three_replicas_on_two_gpus_are_two_plus_one() -> None:
    table = SlotTable(gpus(2))
    assert place(table, "m", 3) == [(0,), (1,), (0,)]
    assert counts(table) == [2, 1]


def test_spec_two_gpus_two_instances_and_four_gpus_four_instances() -> None:
    assert place(SlotTable(gpus(2)), "m", 2) == [(0,), (1,)]
    assert place(SlotTable(gpus(4)), "m", 4) == [(0,), (1,), (2,), (3,)]


def test_idle_first_takes_the_least_loaded_gpu_across_models() -> None:
    table = SlotTable(gpus(3))
    place(table, "a", 2)  # GPUs 0 and 1 busy
    assert place(table, "b", 1) == [(2,)]
    assert place(table, "c", 1) == [(0,)]  # all hold one: the lower index wins the tie


def test_free_memory_breaks_ties_when_known() -> None:
    free = {0: 1000, 1: 9000}
    table = SlotTable(gpus(2), free_mb=free.get)
    assert place(table, "m", 1) == [(1,)]
    assert table.snapshot()[1]["free_mb"] == 9000


def test_pack_first_keeps_idle_gpus_free() -> None:
    table = SlotTable(gpus(3), strategy=PACK_FIRST)
    assert place(table, "a", 1) == [(0,)]
    assert place(table, "b", 2) == [(0,), (0,)]  # GPU 0 is in use already: 1 and 2 stay idle
    assert counts(table) == [3, 0, 0]
    assert "pack first" in table.snapshot()[0]["replicas"][0]["reason"]


def test_multi_gpu_replicas_take_the_least_loaded_set() -> None:
    table = SlotTable(gpus(4))
    place(table, "a", 1)  # GPU 0
    assert place(table, "b", 2, n_gpu=2) == [(1, 2), (0, 3)]
    assert cuda_visible_devices((0, 3)) == "0,3"


def test_no_multi_replica_uses_only_idle_gpus_and_says_who_holds_them() -> None:
    table = SlotTable(gpus(2), allow_multi_replica_per_gpu=False)
    assert place(table, "a", 2) == [(0,), (1,)]
    with pytest.raises(
        PlacementError, match=r"GPU 0 held by a-r0; GPU 1 held by a-r1.*MULTI_REPLICA_PER_GPU=0"
    ):
        table.plan(range(1))


def test_no_multi_replica_refuses_the_whole_launch_when_one_replica_does_not_fit() -> None:
    table = SlotTable(gpus(2), allow_multi_replica_per_gpu=False)
    with pytest.raises(PlacementError, match="replica 2 needs 1 idle GPU"):
        table.plan(range(3))
    assert counts(table) == [0, 0]  # planning reserves nothing


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"n_gpu": 3}, r"each replica needs 3 GPU\(s\) but this host has 2 \(GPUs: 0, 1\)"),
        ({"gpu_idx": [5]}, r"GPU index 5 does not exist \(GPUs: 0, 1\)"),
        ({"gpu_idx": [0, 0]}, "names a GPU twice"),
        ({"gpu_idx": [0, 1], "n_gpu": 1}, "does not match gpu_idx"),
        ({"n_gpu": -1}, "n_gpu must be"),
    ],
)
def test_impossible_requests_are_refused_with_the_reason(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ImpossiblePlacementError, match=message) as info:
        SlotTable(gpus(2)).plan(range(1), **kw)  # type: ignore[arg-type]
    assert info.value.status == 400  # the request is wrong for this host: a validation error, not a conflict


def test_cpu_only_host_auto_means_no_gpu_and_explicit_gpus_are_refused() -> None:
    table = SlotTable([])
    assert place(table, "m", 2) == [(), ()]
    with pytest.raises(PlacementError, match=r"this host has 0 \(GPUs: none\)"):
        table.plan(range(1), n_gpu=1)


def test_n_gpu_zero_runs_on_the_cpu_even_with_gpus() -> None:
    table = SlotTable(gpus(2))
    assert place(table, "m", 2, n_gpu=0) == [(), ()]
    assert counts(table) == [0, 0]


def test_explicit_gpu_idx_places_every_replica_there() -> None:
    table = SlotTable(gpus(2))
    place(table, "a", 1)
    assert place(table, "b", 2, gpu_idx=[0]) == [(0,), (0,)]
    assert table.holders(0) == ["a-r0", "b-r0", "b-r1"]
    strict = SlotTable(gpus(2), allow_multi_replica_per_gpu=False)
    place(strict, "a", 1, gpu_idx=[1])
    with pytest.raises(PlacementError, match="GPU 1 is held by a-r0"):
        strict.plan(range(1), gpu_idx=[1])


def test_release_frees_the_slot_and_snapshot_explains_placements() -> None:
    table = SlotTable(gpus(2))
    place(table, "m", 2)
    row = table.snapshot()[0]
    assert (row["index"], row["name"], row["memory_mb"]) == (0, "GPU-0", 24000)
    assert row["replicas"][0]["label"] == "m-r0"
    assert "idle first" in row["replicas"][0]["reason"]
    table.release("m", 0)
    assert counts(table) == [0, 1]
    assert place(table, "n", 1) == [(0,)]


def test_unknown_strategy_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown launch strategy"):
        SlotTable(gpus(1), strategy="RANDOM")
    assert IDLE_FIRST == "IDLE_FIRST_LAUNCH_STRATEGY"
    assert Placement(replica_index=0, gpu_indices=(), reason="x").gpu_indices == ()


def test_the_table_owns_every_placement_cpu_ones_included() -> None:
    table = SlotTable(gpus(1))
    place(table, "g", 2)
    place(table, "c", 2, n_gpu=0)
    assert [(p.replica_index, p.gpu_indices) for p in table.placements("g")] == [(0, (0,)), (1, (0,))]
    assert [(p.replica_index, p.gpu_indices) for p in table.placements("c")] == [(0, ()), (1, ())]
    assert counts(table) == [2] and table.holders(0) == ["g-r0", "g-r1"]  # CPU replicas hold no GPU
    with pytest.raises(ValueError, match="c-r1 already holds a placement"):
        table.reserve("c", table.placements("c")[1])
    table.release("c", 1)
    table.release("c", 1)  # idempotent
    assert [p.replica_index for p in table.placements("c")] == [0]
