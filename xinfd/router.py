"""Choosing a replica per request: least outstanding requests among READY replicas, ties to the one that
served last.

Least-outstanding adapts to slow replicas by itself (their requests pile up, so they are picked less), which
plain round-robin does not. Ties go to the replica picked last when it is among them: on CPUs its caches and
its spinning OpenMP threads are still warm, while a replica idle since its last request pays to wake up;
sequential traffic thus stays on one replica, and concurrent traffic still spreads because a busy replica's
count is higher. When the last one is not tied (busy, gone, not ready), ties go round-robin.

Admission (issue 4, "Routing"): each replica takes at most ``max_concurrency`` requests at once; beyond that,
requests wait in a bounded per-model queue, and when the queue is full the caller answers 429 with
``Retry-After`` instead of piling work onto replicas until they time out. With no READY replica at all the
caller answers 503 (model loading or recovering) — never a 500; a request may first wait a bounded time for a
replica that is restarting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Generic, Protocol, TypeVar


class Routable(Protocol):
    """What the router needs of a replica."""

    outstanding: int

    @property
    def is_ready(self) -> bool: ...


R = TypeVar("R", bound=Routable)


class NoReadyReplica(Exception):
    """No replica (outside ``exclude``) is READY: the model is loading, recovering or failed."""


class QueueFull(Exception):
    """Every READY replica is at its cap and ``max_queue`` requests are already waiting."""


class Router(Generic[R]):
    """Picks replicas for one model; keeps a rotating counter and a wait queue, so it is cheap per request."""

    def __init__(self, *, max_concurrency: int = 0, max_queue: int = 0) -> None:
        # 0 = unlimited concurrency per replica (no queueing at all).
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.waiting = 0
        self._turn = 0
        # The replica picked last (compared by identity: replicas are not hashable by value).
        self._last: R | None = None
        self._changed: asyncio.Condition | None = None

    def pick(self, replicas: Sequence[R]) -> R | None:
        """The READY replica with the fewest requests in flight (ties: the last picked, else round-robin), or
        None when no replica is READY."""
        ready = [r for r in replicas if r.is_ready]
        if not ready:
            return None
        fewest = min(r.outstanding for r in ready)
        tied = [r for r in ready if r.outstanding == fewest]
        chosen = next((r for r in tied if r is self._last), None)
        if chosen is None:
            chosen = tied[self._turn % len(tied)]
            self._turn += 1
        self._last = chosen
        return chosen

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def notify(self) -> None:
        """A replica finished a request or changed state: let queued requests look again."""
        if self._changed is None or not self.waiting:
            return
        cond = self._changed

        async def wake() -> None:
            async with cond:
                cond.notify_all()

        # Called from sync code (state listeners); the wake-up runs on the loop right after.
        asyncio.get_running_loop().create_task(wake())

    def _admit(self, replicas: Sequence[R], exclude: Callable[[R], bool]) -> tuple[R | None, bool]:
        """(the replica to use or None, whether any candidate is READY at all)."""
        candidates = [r for r in replicas if not exclude(r)]
        if not any(r.is_ready for r in candidates):
            return None, False
        if self.max_concurrency:
            candidates = [r for r in candidates if r.outstanding < self.max_concurrency]
        return self.pick(candidates), True

    @contextlib.asynccontextmanager
    async def lease(
        self,
        replicas: Callable[[], Sequence[R]],
        exclude: Callable[[R], bool] = lambda r: False,
        *,
        wait_ready: float = 0.0,
    ) -> AsyncIterator[R]:
        """Hold one request slot on a replica for the duration of the block.

        ``replicas`` is called on every look, so replicas added by a scale or restarted meanwhile count. With
        no READY replica, the request waits up to ``wait_ready`` seconds in the queue for one (a replica
        restarting after a crash is back within seconds), then ``NoReadyReplica``. Raises ``QueueFull`` when
        the queue is full, before the block runs.
        """
        replica, ready = self._admit(replicas(), exclude)
        if replica is None:
            if not ready and wait_ready <= 0:
                raise NoReadyReplica
            if self.waiting >= self.max_queue:
                raise QueueFull if ready else NoReadyReplica
            self.waiting += 1
            try:
                replica = await self._wait(replicas, exclude, wait_ready)
            finally:
                self.waiting -= 1
        replica.outstanding += 1
        try:
            yield replica
        finally:
            replica.outstanding -= 1
            self.notify()

    async def _wait(self, replicas: Callable[[], Sequence[R]], exclude: Callable[[R], bool], wait_ready: float) -> R:
        """Wait for a free slot: without limit while some replica is READY (the queue), at most
        ``wait_ready`` seconds at a time while none is."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        cond = self._condition()
        async with cond:
            while True:
                replica, ready = self._admit(replicas(), exclude)
                if replica is not None:
                    return replica
                if ready:
                    deadline = None
                    await cond.wait()
                    continue
                if deadline is None:
                    deadline = loop.time() + wait_ready
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise NoReadyReplica
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await cond.wait()
