"""Routing: least outstanding, round-robin ties, per-replica cap, bounded queue (429) and no-replica (503)."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

import pytest

from xinfd.router import NoReadyReplica, QueueFull, Router


@dataclass(eq=False)
class Fake:
    name: str
    outstanding: int = 0
    ready: bool = True

    @property
    def is_ready(self) -> bool:
        return self.ready


def test_pick_prefers_the_least_outstanding_and_ties_go_to_the_replica_picked_last() -> None:
    a, b, c = Fake("a"), Fake("b", outstanding=2), Fake("c")
    router: Router[Fake] = Router()
    # Idle and tied: sequential traffic stays on one replica (warm caches and threads), never b (busier).
    assert Counter(router.pick([a, b, c]).name for _ in range(4)) == {"a": 4}  # type: ignore[union-attr]
    a.outstanding = 1  # a busy: the least outstanding wins over the warm one
    assert router.pick([a, b, c]) is c
    a.outstanding = 0  # tied again: c served last
    assert router.pick([a, b, c]) is c
    c.ready = False  # the last one is not READY: the tie falls to another one
    assert router.pick([a, b, c]) is a
    assert router.pick([Fake("x", ready=False)]) is None


def test_ties_without_the_last_replica_rotate() -> None:
    a, b, c = Fake("a"), Fake("b"), Fake("c")
    router: Router[Fake] = Router()
    first = router.pick([a, b, c])
    assert first is a
    a.outstanding = 1
    picked = []
    for _ in range(2):  # the last pick becomes busy each time, so the next tie is among the others
        chosen = router.pick([a, b, c])
        assert chosen is not None
        chosen.outstanding += 1
        picked.append(chosen.name)
    assert sorted(picked) == ["b", "c"]


async def test_concurrent_leases_still_spread_and_sequential_ones_stay() -> None:
    a, b = Fake("a"), Fake("b")
    router: Router[Fake] = Router()
    async with router.lease(lambda: [a, b]) as one, router.lease(lambda: [a, b]) as two:
        assert {one.name, two.name} == {"a", "b"}
        last = two
    served = []
    for _ in range(3):
        async with router.lease(lambda: [a, b]) as replica:
            served.append(replica)
    assert served == [last] * 3


async def test_lease_counts_outstanding_and_shifts_traffic_from_a_slow_replica() -> None:
    fast, slow = Fake("fast"), Fake("slow")
    router: Router[Fake] = Router(max_concurrency=4, max_queue=4)
    async with router.lease(lambda: [fast, slow]) as first:
        assert first.outstanding == 1
        # The busy one (still serving "first") is not picked while the other is idle.
        async with router.lease(lambda: [fast, slow]) as second:
            assert second is not first
    assert fast.outstanding == slow.outstanding == 0


async def test_full_replicas_queue_then_serve_in_turn() -> None:
    only = Fake("only")
    router: Router[Fake] = Router(max_concurrency=1, max_queue=2)
    order: list[int] = []
    release = asyncio.Event()

    async def request(n: int) -> None:
        async with router.lease(lambda: [only]):
            order.append(n)
            await release.wait()

    tasks = [asyncio.create_task(request(n)) for n in range(3)]
    await asyncio.sleep(0.01)
    assert order == [0] and router.waiting == 2 and only.outstanding == 1
    with pytest.raises(QueueFull):  # cap reached and two already wait: the fourth is refused at once
        async with router.lease(lambda: [only]):
            pass
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2] and router.waiting == 0 and only.outstanding == 0


async def test_no_ready_replica_raises_and_queued_requests_are_told_when_replicas_go_down() -> None:
    replica = Fake("r")
    router: Router[Fake] = Router(max_concurrency=1, max_queue=5)
    with pytest.raises(NoReadyReplica):
        async with router.lease(lambda: [Fake("x", ready=False)]):
            pass
    hold = asyncio.Event()

    async def holder() -> None:
        async with router.lease(lambda: [replica]):
            await hold.wait()

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)

    async def waiter() -> None:
        async with router.lease(lambda: [replica]):
            pass

    queued = asyncio.create_task(waiter())
    await asyncio.sleep(0.01)
    assert router.waiting == 1
    replica.ready = False
    router.notify()  # what a replica state change does
    with pytest.raises(NoReadyReplica):
        await queued
    hold.set()
    await first


async def test_exclude_skips_replicas_already_tried() -> None:
    a, b = Fake("a"), Fake("b")
    router: Router[Fake] = Router(max_concurrency=8, max_queue=0)
    async with router.lease(lambda: [a, b], lambda r: r is a) as picked:
        assert picked is b
    with pytest.raises(NoReadyReplica):
        async with router.lease(lambda: [a, b], lambda r: True):
            pass
