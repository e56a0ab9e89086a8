"""How every child process of xinfd starts: in its own session, and killed if xinfd dies (Linux).

Replicas, uv and pip builds, interpreter probes: each is started with ``preexec_fn=child_setup``, which runs
in the child between fork and exec:

* ``setsid()``: the child leads a new session and process group (pgid = its pid), so a stop signals the
  whole group (``os.killpg``) and reaches whatever the child forked, and a terminal's Ctrl-C at the daemon
  does not reach it;
* ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the child when the thread that forked it exits, so a
  ``kill -9`` of the daemon leaves no replica holding a GPU. Grandchildren do not inherit it; the pid files
  of ``xinfd.orphans`` cover those.

``spawn_child`` is that call for asyncio children, and records each pid as one asyncio waits for, so the
reaper of adopted processes (``xinfd.reaper``) leaves it alone.

``preexec_fn`` is not safe with threads that hold locks at fork time; the daemon forks only from its event
loop thread, and this function calls nothing that takes a Python-level lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from typing import Any

from xinfd.reaper import CHILDREN

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def child_setup() -> None:
    """``preexec_fn`` for every child xinfd starts: new session, and SIGKILL when the parent dies (Linux)."""
    os.setsid()
    if sys.platform.startswith("linux"):
        # Without libc (a static or musl build without libc.so.6) the child still runs, only without
        # the parent-death signal; failing the spawn for it would be worse.
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


async def spawn_child(*argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
    """``asyncio.create_subprocess_exec(*argv, preexec_fn=child_setup, **kwargs)``, registered as asyncio's.

    Every process the daemon starts goes through here, so that ``xinfd.reaper`` knows asyncio waits for it and
    never reaps it (which would lose its exit status); see that module for the race this brackets.
    """
    with CHILDREN.spawning() as register:
        proc = await asyncio.create_subprocess_exec(*argv, preexec_fn=child_setup, **kwargs)
        register(proc.pid)
    return proc
