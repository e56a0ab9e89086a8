"""Pid files of replica process groups, and killing the orphans of a previous daemon at start.

Replicas die with the daemon through PDEATHSIG, but only the group leader has it: a grandchild the engine
forked (a vLLM engine core, a compile helper) survives a ``kill -9`` of the daemon and keeps its GPU memory.
So every replica group is recorded in ``$XINFERENCE_HOME/pids/<replica>.pid`` while it exists, and a starting
daemon kills every group recorded there before it launches anything.

A pid file holds the leader's pid (= the group id) and its start time (``/proc/<pid>/stat`` field 22), so a
pid reused by an unrelated process is recognised and left alone. When the leader is gone but members of its
group remain, they are ours: Linux does not hand out a pid that still names a live process group.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path

from xinfd import proctable
from xinfd.atomic import DEFAULT, write_atomic

log = logging.getLogger(__name__)

PID_DIR_NAME = "pids"


def pid_dir(home: Path) -> Path:
    return home / PID_DIR_NAME


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), or None if it does not exist or is unknown."""
    info = proctable.stat(pid)
    if info is None or info.zombie:  # a zombie holds no resources and cannot be killed again
        return None
    return info.start_time


def write_pid_file(path: Path, pid: int) -> None:
    """Record a replica group atomically (``write_atomic``: a crash never leaves half a pid file)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = {"pgid": pid, "start_time": process_start_time(pid), "daemon_pid": os.getpid()}
    write_atomic(path, json.dumps(record), mode=DEFAULT)


def remove_pid_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _kill_group(pgid: int, timeout: float) -> bool:
    """SIGKILL a group (SIGCONT too: a stopped member must not linger) and wait until it is gone."""
    for sig in (signal.SIGKILL, signal.SIGCONT):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    deadline = time.monotonic() + timeout
    while proctable.group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def kill_orphans(home: Path, *, timeout: float = 10.0) -> list[str]:
    """Kill every replica group a previous daemon left behind; returns one line per group killed.

    Runs before the daemon serves or launches anything (synchronously: nothing else is happening yet), so the
    GPUs and sockets of the old replicas are free when the desired state is restored.
    """
    directory = pid_dir(home)
    if not directory.is_dir():
        return []
    killed: list[str] = []
    for path in sorted(directory.glob("*.pid")):
        try:
            record = json.loads(path.read_text())
            pgid = int(record["pgid"])
            recorded_start = record.get("start_time")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable pid file %s: %s", path, exc)
            remove_pid_file(path)
            continue
        if pgid <= 1 or pgid == os.getpgid(0):
            remove_pid_file(path)  # never our own group or init, whatever the file says
            continue
        leader_start = process_start_time(pgid)
        if leader_start is not None and recorded_start is not None and leader_start != recorded_start:
            log.info("pid %s of %s was reused by another process; leaving it alone", pgid, path.stem)
        elif proctable.group_alive(pgid) and os.getpgid(0) != pgid:
            what = "replica group" if leader_start is not None else "leftover processes of replica group"
            if _kill_group(pgid, timeout):
                killed.append(f"{path.stem}: killed {what} {pgid}")
                log.warning("killed orphaned %s %s of %s (left by a previous daemon)", what, pgid, path.stem)
            else:
                log.error("orphaned group %s of %s survived SIGKILL for %.0fs", pgid, path.stem, timeout)
        remove_pid_file(path)
    return killed
