"""The reaper of adopted processes: reaps what nobody waits for, never a child asyncio waits for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xinfd import proctable
from xinfd.reaper import ChildRegistry, Reaper, describe_status

REPO = Path(__file__).resolve().parents[2]
linux_only = pytest.mark.skipif(not proctable.has_proc(), reason="needs Linux /proc")


class FakeTable:
    """Children and their exit statuses, as ``waitpid(pid, WNOHANG)`` would report them."""

    def __init__(self, exited: dict[int, int], alive: set[int]) -> None:
        self.exited = dict(exited)
        self.alive = set(alive)
        self.waited: list[int] = []

    def children(self) -> list[int]:
        return sorted(self.alive | set(self.exited))

    def waitpid(self, pid: int, options: int) -> tuple[int, int]:
        assert options == os.WNOHANG
        self.waited.append(pid)
        if pid in self.exited:
            return pid, self.exited.pop(pid)
        if pid in self.alive:
            return 0, 0
        raise ChildProcessError(pid)


def test_sweep_reaps_unowned_exited_children_only() -> None:
    registry = ChildRegistry()
    table = FakeTable(exited={10: 0, 11: 9, 12: 17 << 8}, alive={13})
    with registry.spawning() as register:
        register(12)  # asyncio waits for 12: its status is asyncio's to read
    reaper = Reaper(registry, list_children=table.children, waitpid=table.waitpid)
    assert reaper.sweep() == [10, 11]
    assert 12 not in table.waited and table.exited == {12: 17 << 8}
    assert reaper.reaped == 2 and reaper.sweep() == []


def test_no_sweep_while_a_spawn_is_in_flight_then_one_after_it() -> None:
    registry = ChildRegistry()
    table = FakeTable(exited={20: 0}, alive=set())
    reaper = Reaper(registry, list_children=table.children, waitpid=table.waitpid)
    swept: list[list[int]] = []
    registry.on_spawned = lambda: swept.append(reaper.sweep())
    with registry.spawning() as register:
        # Forked, exited at once, pid not registered yet: an unknown zombie that must not be taken.
        table.exited[21] = 3 << 8
        assert reaper.sweep() == [] and table.waited == []
        register(21)
    assert swept == [[20]]  # the deferred sweep ran when the spawn was done, and left 21 to its owner
    assert table.exited == {21: 3 << 8}


def test_registry_forgets_pids_that_are_no_longer_children() -> None:
    registry = ChildRegistry()
    with registry.spawning() as register:
        register(30)
        register(31)
    registry.forget_gone([31])
    assert not registry.owns(30) and registry.owns(31)


def test_describe_status() -> None:
    assert describe_status(17 << 8) == "exit code 17"
    assert describe_status(signal.SIGKILL) == "killed by signal 9"


@linux_only
def test_a_group_of_zombies_is_not_alive() -> None:
    child = subprocess.Popen(["sleep", "0"], start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        while (info := proctable.stat(child.pid)) is not None and not info.zombie:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(child.pid, 0)  # the kernel still counts the zombie as a member of the group...
        assert not proctable.group_alive(child.pid)  # ...the supervisor does not
        assert [m.pid for m in proctable.group_members(child.pid)] == [child.pid]
    finally:
        child.wait()
    assert not proctable.group_alive(child.pid)


@linux_only
def test_group_with_a_live_member_is_alive() -> None:
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert proctable.group_alive(child.pid)
        assert child.pid in proctable.children()
    finally:
        child.kill()
        child.wait()


# A daemon stand-in: the reaper installed, 20 children started at once through spawn_child, each leaving an
# orphan and exiting 17. asyncio must see every 17 (nothing stolen) and the reaper every orphan.
_SCRIPT = """
import asyncio, json
from xinfd import proctable
from xinfd.childproc import spawn_child
from xinfd.reaper import Reaper

async def one():
    proc = await spawn_child("sh", "-c", "sleep 0.2 & exit 17")
    return await proc.wait()

async def main():
    reaper = Reaper(backstop_interval=60)
    reaper.install(asyncio.get_running_loop())
    codes = await asyncio.gather(*(one() for _ in range(20)))
    for _ in range(200):
        if reaper.reaped >= 20:
            break
        await asyncio.sleep(0.02)
    left = proctable.children()
    reaper.close()
    print(json.dumps({"codes": codes, "reaped": reaper.reaped, "subreaper": reaper.subreaper, "left": left}))

asyncio.run(main())
"""


@linux_only
def test_spawned_children_keep_their_status_and_adopted_orphans_are_reaped() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["subreaper"] is True
    assert report["codes"] == [17] * 20
    assert report["reaped"] == 20 and report["left"] == []
