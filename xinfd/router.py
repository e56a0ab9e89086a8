"""Choosing a replica per request: least outstanding requests among READY replicas, ties round-robin.

Least-outstanding adapts to slow replicas by itself (their requests pile up, so they are picked less), which
plain round-robin does not. The round-robin tie-break spreads an idle model's traffic evenly.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Protocol, TypeVar


class Routable(Protocol):
    """What the router needs of a replica."""

    @property
    def outstanding(self) -> int: ...

    @property
    def is_ready(self) -> bool: ...


R = TypeVar("R", bound=Routable)


class Router:
    """Picks replicas for one model; keeps only a rotating counter, so it is cheap per request."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def pick(self, replicas: Sequence[R]) -> R | None:
        """The READY replica with the fewest requests in flight, or None when no replica is READY."""
        ready = [r for r in replicas if r.is_ready]
        if not ready:
            return None
        fewest = min(r.outstanding for r in ready)
        tied = [r for r in ready if r.outstanding == fewest]
        return tied[next(self._counter) % len(tied)]
