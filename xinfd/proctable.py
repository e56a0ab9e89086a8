"""What the process table says about a process, a process group, or a parent's children (Linux ``/proc``).

Why not ``os.killpg(pgid, 0)``: it succeeds as long as any member of the group exists, zombies included, and a
zombie holds no memory, no GPU and no socket: it only waits for its parent to reap it. A replica group whose
members are all zombies is gone for every purpose of the supervisor, so "alive" here means "has a member that
is not a zombie". Without ``/proc`` (macOS) the functions fall back to what ``kill`` can tell.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

PROC = "/proc"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` xinfd reads (proc(5) numbering in the comments)."""

    pid: int
    state: str  # field 3: R, S, D, Z (zombie), T (stopped), ...
    ppid: int  # field 4
    pgrp: int  # field 5
    session: int  # field 6
    start_time: int  # field 22, clock ticks since boot

    @property
    def zombie(self) -> bool:
        return self.state == "Z"


def has_proc() -> bool:
    return os.path.isdir(f"{PROC}/self")


def stat(pid: int) -> ProcStat | None:
    """``/proc/<pid>/stat`` parsed, or None if there is no such process (or no ``/proc``)."""
    try:
        with open(f"{PROC}/{pid}/stat") as f:
            # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
            fields = f.read().rsplit(")", 1)[1].split()
        return ProcStat(
            pid=pid,
            state=fields[0],
            ppid=int(fields[1]),
            pgrp=int(fields[2]),
            session=int(fields[3]),
            start_time=int(fields[19]),
        )
    except (OSError, IndexError, ValueError):
        return None


def all_pids() -> list[int]:
    try:
        return [int(entry) for entry in os.listdir(PROC) if entry.isdigit()]
    except OSError:
        return []


def group_members(pgid: int) -> list[ProcStat]:
    """Every process of group ``pgid``, zombies included (a scan of ``/proc``)."""
    found = []
    for pid in all_pids():
        info = stat(pid)
        if info is not None and info.pgrp == pgid:
            found.append(info)
    return found


def group_alive(pgid: int) -> bool:
    """Whether group ``pgid`` has a member that is not a zombie (one a signal can still end)."""
    try:
        os.killpg(pgid, 0)  # cheap: an empty group needs no scan of the table
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if not has_proc():
        return True
    return any(not member.zombie for member in group_members(pgid))


def children(pid: int | None = None) -> list[int]:
    """The children of process ``pid`` (default: this process), from every one of its threads.

    ``/proc/<pid>/task/<tid>/children`` lists the children of one thread (a process adopted by a
    multi-threaded reaper is attached to one of its threads), so all threads are read. Kernels built without
    ``CONFIG_PROC_CHILDREN`` lack that file: then the whole table is scanned for ``ppid == pid``.
    """
    pid = os.getpid() if pid is None else pid
    found: set[int] = set()
    try:
        tasks = os.listdir(f"{PROC}/{pid}/task")
    except OSError:
        return []
    listed = False
    for tid in tasks:
        with contextlib.suppress(OSError):
            with open(f"{PROC}/{pid}/task/{tid}/children") as f:
                found.update(int(child) for child in f.read().split())
            listed = True
    if not listed:
        for other in all_pids():
            info = stat(other)
            if info is not None and info.ppid == pid:
                found.add(other)
    return sorted(found)
