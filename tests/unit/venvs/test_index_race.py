"""``first_index_use``: the first uv call that needs an index races the index check, and is redone only when
the check changes the index options (scripted runs and checks, no uv)."""

from __future__ import annotations

import asyncio

import pytest

from xinfd.venvs.reach import first_index_use
from xinfd.venvs.spec import IndexOptions, VenvError

ALL = IndexOptions(index_url="http://primary/simple", extra_index_urls=("http://dead/simple",))
LIVE = IndexOptions(index_url="http://primary/simple")


class Runs:
    """A uv call: records the index it got; ``hang`` makes the first call wait until cancelled, ``fail`` makes
    the first call fail at once."""

    def __init__(self, *, hang: bool = False, fail: bool = False) -> None:
        self.seen: list[IndexOptions] = []
        self.cancelled = 0
        self.hang, self.fail = hang, fail

    async def __call__(self, index: IndexOptions) -> str:
        self.seen.append(index)
        first = len(self.seen) == 1
        if first and self.fail:
            raise VenvError("uv pip compile failed (exit 2): dead index")
        if first and self.hang:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return "ok"


def check(result: IndexOptions | Exception, delay: float = 0.0) -> asyncio.Future[IndexOptions]:
    async def run() -> IndexOptions:
        await asyncio.sleep(delay)
        if isinstance(result, Exception):
            raise result
        return result
    return asyncio.ensure_future(run())


async def test_a_call_that_succeeds_first_does_not_wait_for_the_check() -> None:
    runs = Runs()
    slow = check(LIVE, delay=3600)
    assert await first_index_use(slow, ALL, runs) == ALL
    assert runs.seen == [ALL]
    slow.cancel()


async def test_a_check_that_keeps_every_location_lets_the_call_go_on() -> None:
    runs = Runs()
    assert await first_index_use(check(ALL), ALL, runs) == ALL
    assert runs.seen == [ALL]


async def test_a_check_that_drops_a_location_cancels_the_call_and_redoes_it() -> None:
    runs = Runs(hang=True)
    assert await first_index_use(check(LIVE, delay=0.01), ALL, runs) == LIVE
    assert runs.seen == [ALL, LIVE] and runs.cancelled == 1


async def test_a_call_that_fails_on_a_dead_location_is_redone_without_it() -> None:
    runs = Runs(fail=True)
    assert await first_index_use(check(LIVE, delay=0.01), ALL, runs) == LIVE
    assert runs.seen == [ALL, LIVE]


async def test_uv_s_own_failure_is_raised_when_the_check_changes_nothing() -> None:
    runs = Runs(fail=True)
    with pytest.raises(VenvError, match="dead index"):
        await first_index_use(check(ALL, delay=0.01), ALL, runs)
    assert runs.seen == [ALL]


async def test_an_unreachable_primary_index_is_the_check_s_error() -> None:
    runs = Runs(hang=True)
    with pytest.raises(VenvError, match="primary:80 is unreachable"):
        await first_index_use(check(VenvError("package index primary:80 is unreachable")), ALL, runs)
    assert runs.cancelled == 1
