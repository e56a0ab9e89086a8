"""Real process groups: stop escalates to SIGKILL, grandchildren die, children die with a crashed parent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from xinfd.processes import SubprocessSpawner, stop_group

IGNORES_TERM_AND_FORKS = (
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "child = subprocess.Popen(['sleep', '300'])\n"
    "print('grandchild', child.pid, flush=True)\n"
    "time.sleep(300)\n"
)


def alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


async def test_stop_group_kills_a_term_ignoring_leader_and_its_grandchild(tmp_path: Path) -> None:
    log = tmp_path / "r.log"
    handle = await SubprocessSpawner().spawn((sys.executable, "-c", IGNORES_TERM_AND_FORKS),
                                             env=dict(os.environ), cwd=None, log_path=log)
    assert os.getpgid(handle.pid) == handle.pid  # its own process group
    for _ in range(200):
        if any(line.startswith("grandchild") for line in handle.stderr_tail()):
            break
        await asyncio.sleep(0.02)
    grandchild = int(next(line for line in handle.stderr_tail() if line.startswith("grandchild")).split()[1])
    started = time.monotonic()
    code = await stop_group(handle, stop_signal=signal.SIGTERM, grace=0.5)
    assert code == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - started < 5
    assert not alive(handle.pid) and not alive(grandchild)
    assert "grandchild" in log.read_text()


async def test_stop_group_after_leader_exit_still_reaps_grandchildren(tmp_path: Path) -> None:
    code = "import subprocess; p = subprocess.Popen(['sleep', '300']); print('grandchild', p.pid, flush=True)"
    handle = await SubprocessSpawner().spawn((sys.executable, "-c", code), env=dict(os.environ), cwd=None,
                                             log_path=tmp_path / "r.log")
    assert await handle.wait() == 0
    grandchild = int(handle.stderr_tail()[-1].split()[1])
    assert alive(grandchild) and handle.group_alive()
    await stop_group(handle, stop_signal=signal.SIGTERM, grace=1)
    assert not alive(grandchild) and not handle.group_alive()


def test_children_die_when_the_daemon_is_killed(tmp_path: Path) -> None:
    """The parent-death signal: a SIGKILLed daemon cannot stop its replicas, the kernel does."""
    parent_code = (
        "import asyncio, os, sys, time\n"
        "from pathlib import Path\n"
        "from xinfd.processes import SubprocessSpawner\n"
        "async def main():\n"
        f"    h = await SubprocessSpawner().spawn((sys.executable, '-c', {IGNORES_TERM_AND_FORKS!r}),"
        f" env=dict(os.environ), cwd=None, log_path=Path({str(tmp_path / 'c.log')!r}))\n"
        "    print(h.pid, flush=True)\n"
        "    await asyncio.sleep(300)\n"
        "asyncio.run(main())\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert alive(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child)
    finally:
        parent.stdout.close()
        if alive(child):
            os.killpg(child, signal.SIGKILL)


async def test_stop_group_wakes_a_stopped_process_so_it_gets_the_stop_signal(tmp_path: Path) -> None:
    # A hung (SIGSTOPped) replica must die of the stop signal, not sit out the grace period until SIGKILL.
    handle = await SubprocessSpawner().spawn(("sleep", "300"), env=dict(os.environ), cwd=None,
                                             log_path=tmp_path / "r.log")
    os.kill(handle.pid, signal.SIGSTOP)
    assert await stop_group(handle, stop_signal=signal.SIGTERM, grace=30) == -signal.SIGTERM
    assert not handle.group_alive()
