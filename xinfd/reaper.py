"""Reaping the processes xinfd adopts, so it is correct as a container's PID 1 and as an ordinary process.

A replica leader that dies (OOM killer, ``kill -9``, a crash) leaves its children behind. xinfd makes itself
the *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``, Linux), so those children are re-parented to xinfd
rather than to init: the supervisor can still find them in the replica's process group and kill them. As PID 1
of a PID namespace (a container entrypoint with no init) xinfd adopts every orphan of the namespace anyway.
Either way an adopted process that exits stays a zombie until xinfd reaps it; nothing else will.

Who waits for which child. The processes xinfd starts itself (replicas, uv, pip, interpreter probes) are
started through ``xinfd.childproc.spawn_child`` and waited for by asyncio, whose child watcher calls
``waitpid(pid)`` for each of them; a ``waitpid(-1)`` here would steal those exit statuses (asyncio would report
255 and a replica's "exit code 17" would be lost). Replacing asyncio's watcher is not portable either: the
child-watcher API is deprecated in Python 3.12 and removed in 3.14. So the two coexist, each owning its pids:

* ``CHILDREN`` (a ``ChildRegistry``, one per process like its set of children) holds the pids asyncio waits
  for. ``spawn_child`` marks a spawn *in flight* before the fork and registers the pid right after it.
* A sweep lists this process's children (``xinfd.proctable.children``) and calls ``waitpid(pid, WNOHANG)`` on
  each pid the registry does not own: that reaps an adopted zombie and leaves a live process alone. While a
  spawn is in flight the sweep does nothing (the new child exists before its pid is registered) and runs once
  the spawn is done: the same race, and the same answer, as asyncio's old ``FastChildWatcher`` fork counter.
* Sweeps run on SIGCHLD (the kernel sends it to the new parent when an adopted child exits, and when a child
  is adopted already dead), plus a slow periodic sweep as a backstop. All of it runs on the event loop thread,
  the only thread that spawns.

A child started another way from another thread (``subprocess.run`` in an executor) is not in the registry and
its status could be taken (``subprocess`` then reports exit code 0): start children with ``spawn_child``. A
synchronous ``subprocess.run`` on the loop thread is safe, the sweep cannot run between its fork and its wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator

from xinfd import proctable

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36  # from <linux/prctl.h>
BACKSTOP_INTERVAL_S = 5.0


class ChildRegistry:
    """The children someone else (asyncio) waits for, and whether a spawn is under way."""

    def __init__(self) -> None:
        self._owned: set[int] = set()
        self._in_flight = 0
        self.on_spawned: Callable[[], None] | None = None  # the installed reaper's "sweep soon"

    @contextlib.contextmanager
    def spawning(self) -> Iterator[Callable[[int], None]]:
        """Bracket one spawn; call the yielded function with the new pid as soon as it is known."""
        self._in_flight += 1
        try:
            yield self._owned.add
        finally:
            self._in_flight -= 1
            if self._in_flight == 0 and self.on_spawned is not None:
                self.on_spawned()

    @property
    def spawn_in_flight(self) -> bool:
        return self._in_flight > 0

    def owns(self, pid: int) -> bool:
        return pid in self._owned

    def forget_gone(self, children: list[int]) -> None:
        """Drop the pids that are no longer children (their owner has reaped them)."""
        self._owned.intersection_update(children)


CHILDREN = ChildRegistry()


def become_subreaper() -> bool:
    """Make this process the reaper of its descendants' orphans (Linux); False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False
    if not ok:
        log.warning("cannot become child subreaper: %s", os.strerror(ctypes.get_errno()))
    return ok


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    if os.WIFEXITED(status):
        return f"exit code {os.WEXITSTATUS(status)}"
    return f"status {status}"


class Reaper:
    """Reaps every child of this process that ``registry`` does not own; see the module docstring."""

    def __init__(
        self,
        registry: ChildRegistry = CHILDREN,
        *,
        list_children: Callable[[], list[int]] = proctable.children,
        waitpid: Callable[[int, int], tuple[int, int]] = os.waitpid,
        backstop_interval: float = BACKSTOP_INTERVAL_S,
    ) -> None:
        self._registry = registry
        self._list_children = list_children
        self._waitpid = waitpid
        self._backstop_interval = backstop_interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self.subreaper = False
        self.reaped = 0  # adopted processes reaped since install

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Become the subreaper and sweep on SIGCHLD and periodically; nothing on systems without /proc."""
        if not proctable.has_proc():
            log.info("no /proc: adopted processes are not reaped by xinfd")
            return
        self._loop = loop
        self.subreaper = become_subreaper()
        loop.add_signal_handler(signal.SIGCHLD, self.sweep_soon)
        self._registry.on_spawned = self.sweep_soon
        self._timer = loop.call_later(self._backstop_interval, self._backstop)
        log.info("reaping adopted processes (pid %d%s)", os.getpid(),
                 ", child subreaper" if self.subreaper else "")
        self.sweep()  # whatever was adopted before the handler existed

    def close(self) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError, ValueError):  # the loop may be closing
            self._loop.remove_signal_handler(signal.SIGCHLD)
        if self._timer is not None:
            self._timer.cancel()
        if self._registry.on_spawned == self.sweep_soon:
            self._registry.on_spawned = None
        self.sweep()
        self._loop = None

    def sweep_soon(self) -> None:
        """Coalesce a burst of SIGCHLDs into one sweep on the next loop iteration."""
        if self._loop is not None and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._scheduled_sweep)

    def _scheduled_sweep(self) -> None:
        self._scheduled = False
        self.sweep()

    def _backstop(self) -> None:
        self.sweep()
        if self._loop is not None:
            self._timer = self._loop.call_later(self._backstop_interval, self._backstop)

    def sweep(self) -> list[int]:
        """Reap every exited child nobody else owns; returns their pids. Skipped while a spawn is in flight."""
        if self._registry.spawn_in_flight:
            return []  # the registry calls sweep_soon when the spawn is done
        children = self._list_children()
        self._registry.forget_gone(children)
        reaped = []
        for pid in children:
            if self._registry.owns(pid):
                continue
            try:
                done, status = self._waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped meanwhile, or not ours after all
                continue
            if done:
                reaped.append(pid)
                log.info("reaped adopted process %d (%s)", pid, describe_status(status))
        self.reaped += len(reaped)
        return reaped
