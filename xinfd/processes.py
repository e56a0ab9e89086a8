"""Spawning and killing replica process groups.

Each replica runs in its own session (so its process group id equals its pid) with a parent-death signal, so
neither a stop nor a daemon crash leaves children behind. Stop = the launch spec's stop signal to the whole
group, wait the grace period, then SIGKILL the group (circus/honcho style). ``Spawner`` is the seam
the supervisor tests replace with scripted fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from xinfd import proctable
from xinfd.childproc import spawn_child

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 20


class ProcessHandle(Protocol):
    """A spawned replica process, as the supervisor sees it."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int:
        """Wait for the process (not the group) to exit; returns its exit status (negative: signal)."""
        ...

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the whole process group; no error if it is already gone."""
        ...

    def group_alive(self) -> bool:
        """Whether any process of the group still exists, zombies not counted (they hold nothing)."""
        ...

    def stderr_tail(self) -> list[str]:
        """The last lines the process wrote to stderr (for failure messages)."""
        ...


class Spawner(Protocol):
    """Starts processes; injected so supervision logic is testable without real children."""

    async def spawn(
        self, argv: tuple[str, ...], *, env: Mapping[str, str], cwd: str | None, log_path: Path,
        preload: tuple[str, ...] = (),
    ) -> ProcessHandle:
        """Start ``argv``; ``preload`` names modules a fork server may hold for it (``xinfd.preloading``)."""
        ...


class SubprocessHandle:
    """A real child process whose stdout and stderr go straight to its log file.

    No pipe: with a pipe, a grandchild that inherited it would keep ``wait()`` from returning (asyncio waits
    for the pipes to close), and the daemon would spend CPU pumping every replica's output.
    """

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self._proc = proc
        self._log_path = log_path

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def wait(self) -> int:
        return await self._proc.wait()

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def group_alive(self) -> bool:
        # Not ``killpg(pgid, 0)``: that succeeds on a group of zombies (grandchildren the daemon adopted and
        # has not reaped yet), and the stop would wait for them forever.
        return proctable.group_alive(self._proc.pid)

    def stderr_tail(self) -> list[str]:
        return log_tail(self._log_path, STDERR_TAIL_LINES)


def log_tail(path: Path, lines: int, *, max_bytes: int = 16384) -> list[str]:
    """The last ``lines`` lines of a log file, reading at most ``max_bytes`` from its end."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return []
    return [line.decode(errors="replace") for line in data.splitlines()[-lines:]]


class SubprocessSpawner:
    """Spawns real children in their own session with stdout+stderr appended to a per-replica log."""

    async def spawn(
        self, argv: tuple[str, ...], *, env: Mapping[str, str], cwd: str | None, log_path: Path,
        preload: tuple[str, ...] = (),
    ) -> ProcessHandle:
        """Exec ``argv`` (``preload`` is for spawners that fork; here every child imports its own)."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as sink:
            proc = await spawn_child(  # setsid + PDEATHSIG, and asyncio's to reap (xinfd.childproc)
                *argv,
                env=dict(env),
                cwd=cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=asyncio.subprocess.STDOUT,
            )
        return SubprocessHandle(proc, log_path)


async def stop_group(handle: ProcessHandle, *, stop_signal: int, grace: float) -> int | None:
    """Stop a replica's whole group: ``stop_signal``, wait ``grace`` seconds, then SIGKILL what remains.

    Returns the exit status of the group leader. Waits until no process of the group is left, so that GPU
    memory is really free when the caller releases the slot.
    """
    if handle.returncode is None:
        handle.signal_group(stop_signal)
        # A stopped (SIGSTOP, hung) process would hold the stop signal pending for the whole grace period.
        handle.signal_group(signal.SIGCONT)
        try:
            await asyncio.wait_for(handle.wait(), timeout=grace)
        except TimeoutError:
            log.warning("pid %s ignored signal %s for %.1fs; killing its group", handle.pid, stop_signal,
                        grace)
            handle.signal_group(signal.SIGKILL)
            await handle.wait()
    # The leader is gone; grandchildren may linger (they inherited the group).
    if handle.group_alive():
        handle.signal_group(signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + grace
        while handle.group_alive() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if handle.group_alive():
            handle.signal_group(signal.SIGKILL)
            while handle.group_alive():
                await asyncio.sleep(0.02)
    return handle.returncode
