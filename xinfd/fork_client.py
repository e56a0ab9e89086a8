"""The daemon's side of one fork server (``xinfd.forkserver``): start it, ask it for replicas, watch them.

A replica forked by a server is the server's child, not the daemon's, so its exit status arrives as a message
(``xinfd.fork_protocol``). Its pidfd comes with the reply to the spawn: opened by the server before it could
reap the child, it names that process and no later holder of the pid, and it becomes readable when the
process ends. If the server dies, its children get SIGKILL (their parent-death signal) and each handle learns
their end through its pidfd, with status ``-SIGKILL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xinfd import fork_protocol, proctable
from xinfd.childproc import spawn_child

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 20
# A fork takes milliseconds; a server that has not answered by then is stuck (the replica is exec'd instead).
SPAWN_REPLY_TIMEOUT_S = 30.0


class ForkServerError(Exception):
    """The fork server could not start, or cannot fork this replica (the caller falls back to exec)."""


class ForkedHandle:
    """A replica process a fork server started (``xinfd.processes.ProcessHandle``)."""

    def __init__(self, pid: int, pidfd: int | None, log_path: Path) -> None:
        self._pid = pid
        self._pidfd = pidfd
        self._log_path = log_path
        self._returncode: int | None = None
        self._done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._orphan_watch: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._returncode

    async def wait(self) -> int:
        return await asyncio.shield(self._done)

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pid, sig)

    def group_alive(self) -> bool:
        return proctable.group_alive(self._pid)

    def stderr_tail(self) -> list[str]:
        from xinfd.processes import log_tail

        return log_tail(self._log_path, STDERR_TAIL_LINES)

    def exited(self, status: int) -> None:
        """The server reaped the process with ``status`` (negative: killed by that signal)."""
        if self._returncode is not None:
            return
        self._returncode = status
        self._close_pidfd()
        if not self._done.done():
            self._done.set_result(status)

    def orphaned(self) -> None:
        """The server is gone: the process dies of its parent-death signal; report that once it has ended."""
        if self._returncode is not None:
            return
        loop = asyncio.get_running_loop()
        if self._pidfd is None:
            self._orphan_watch = loop.create_task(self._poll_until_gone())
            return
        loop.add_reader(self._pidfd, self._ended_as_orphan)

    def _ended_as_orphan(self) -> None:
        self.exited(-signal.SIGKILL)  # removes the reader and closes the pidfd

    async def _poll_until_gone(self) -> None:
        while proctable.group_alive(self._pid):
            await asyncio.sleep(0.1)
        self.exited(-signal.SIGKILL)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None


class ForkServer:
    """One running ``xinfd.forkserver`` process and the replicas it forked."""

    def __init__(self, python: str, modules: tuple[str, ...], env: Mapping[str, str], log_path: Path) -> None:
        self.python = python
        self.modules = modules
        self._env = dict(env)
        self._log_path = log_path
        self._sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._replies: dict[int, asyncio.Future[tuple[dict[str, Any], list[int]]]] = {}
        self._children: dict[int, ForkedHandle] = {}
        self._next_id = 0
        self._abandoned: set[int] = set()
        self._lost = False
        self._exit_watch: asyncio.Future[Any] | None = None
        self.import_seconds: float | None = None

    @property
    def alive(self) -> bool:
        return self._sock is not None and not self._lost

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def children(self) -> int:
        """Replicas of this server that have not exited yet."""
        return sum(1 for handle in self._children.values() if handle.returncode is None)

    async def start(self, timeout: float) -> None:
        """Spawn the server and wait until its modules are imported; raises ``ForkServerError``."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._log_path.open("ab") as sink:
                self._proc = await spawn_child(
                    self.python, "-m", "xinfd.forkserver", "--fd", str(theirs.fileno()), *self.modules,
                    env=self._env, stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=asyncio.subprocess.STDOUT,
                    pass_fds=(theirs.fileno(),),
                )
        except OSError as exc:
            ours.close()
            raise ForkServerError(f"cannot start {self.python}: {exc}") from exc
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._ready = loop.create_future()
        loop.add_reader(ours.fileno(), self._on_readable)
        exited: asyncio.Future[Any] = asyncio.ensure_future(self._proc.wait())
        exited.add_done_callback(lambda _: self._on_lost("exited"))
        self._exit_watch = exited
        waiters: set[asyncio.Future[Any]] = {self._ready, exited}
        try:
            done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await self.close()
            raise
        if self._ready in done and not self._ready.cancelled() and self._ready.exception() is None:
            hello = self._ready.result()
            if hello.get("ready"):
                self.import_seconds = float(hello.get("seconds") or 0.0)
                return
            await self.close()
            raise ForkServerError(f"its imports failed: {hello.get('failed')}")
        await self.close()
        if not done:
            raise ForkServerError(f"its imports took longer than {timeout:.0f}s")
        raise ForkServerError(f"it exited during its imports (exit status {self._proc.returncode})")

    async def spawn(self, argv: tuple[str, ...], *, env: Mapping[str, str], cwd: str | None,
                    log_path: Path) -> ForkedHandle:
        """Fork ``python -m MODULE`` (``argv``) with ``env`` and ``cwd``, output appended to ``log_path``."""
        if not self.alive or self._sock is None:
            raise ForkServerError("the fork server is not running")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._next_id += 1
        request_id = self._next_id
        reply: asyncio.Future[tuple[dict[str, Any], list[int]]] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = reply
        stdin_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                message = {"op": "spawn", "id": request_id, "argv": list(argv), "env": dict(env), "cwd": cwd}
                await self._send(message, (stdin_fd, log_fd))
            finally:
                os.close(log_fd)
        except OSError as exc:
            self._replies.pop(request_id, None)
            raise ForkServerError(f"cannot send the spawn request: {exc}") from exc
        finally:
            os.close(stdin_fd)
        try:
            answer, fds = await asyncio.wait_for(asyncio.shield(reply), timeout=SPAWN_REPLY_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError) as exc:
            # The server may still fork it: a child nobody waits for must not run, so it is killed on arrival.
            self._abandoned.add(request_id)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise ForkServerError(f"no answer within {SPAWN_REPLY_TIMEOUT_S:.0f}s") from exc
        if "pid" not in answer:
            for fd in fds:
                os.close(fd)
            raise ForkServerError(str(answer.get("error") or "the fork server refused the spawn"))
        pid = int(answer["pid"])
        handle = ForkedHandle(pid, fds[0] if fds else None, log_path)
        for extra in fds[1:]:
            os.close(extra)
        self._children[pid] = handle
        if self._lost:  # the server died between its reply and now
            handle.orphaned()
        return handle

    async def _send(self, message: dict[str, Any], fds: tuple[int, ...]) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                fork_protocol.send(self._sock, message, fds)
                return
            except BlockingIOError:
                writable = loop.create_future()
                loop.add_writer(self._sock.fileno(), writable.set_result, None)
                try:
                    await writable
                finally:
                    loop.remove_writer(self._sock.fileno())

    def _on_readable(self) -> None:
        self._drain()

    def _drain(self) -> None:
        """Dispatch every message waiting on the socket; at end of stream, the server is lost."""
        if self._sock is None or self._sock.fileno() < 0:
            return
        while True:
            try:
                received = fork_protocol.receive(self._sock)
            except BlockingIOError:
                return
            except ValueError:
                log.warning("fork server %s sent an unreadable message", self.pid)
                continue
            except OSError as exc:
                self._on_lost(str(exc))
                return
            if received is None:
                self._on_lost("closed its socket")
                return
            self._dispatch(*received)

    def _dispatch(self, message: dict[str, Any], fds: list[int]) -> None:
        if "exit" in message:
            handle = self._children.pop(int(message["exit"]), None)
            if handle is not None:
                handle.exited(int(message.get("status", -1)))
            for fd in fds:
                os.close(fd)
            return
        if "ready" in message or "failed" in message:
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(message)
            return
        request_id = int(message.get("id") or 0)
        reply = self._replies.pop(request_id, None)
        if request_id in self._abandoned:
            self._abandoned.discard(request_id)
            if "pid" in message:
                log.warning("fork server %s forked pid %s after its launch was abandoned; killing it",
                            self.pid, message["pid"])
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(message["pid"]), signal.SIGKILL)
        if reply is None or reply.done():
            for fd in fds:
                os.close(fd)
            return
        reply.set_result((message, fds))

    def _on_lost(self, why: str) -> None:
        if self._lost:
            return
        self._lost = True
        self._drain()  # exit reports sent before the server died come first
        if self._sock is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
        if self._children:
            log.warning("fork server %s %s; its %d replica(s) die with it", self.pid, why, self.children)
        for handle in self._children.values():
            handle.orphaned()
        for reply in self._replies.values():
            if not reply.done():
                reply.set_result(({"error": f"the fork server {why}"}, []))
        self._replies.clear()
        if self._ready is not None and not self._ready.done():
            self._ready.set_result({"failed": why})

    async def close(self, grace: float = 5.0) -> None:
        """Hang up (the server exits at end of stream) and wait for it; SIGKILL after ``grace`` seconds."""
        self._on_lost("was closed")
        if self._sock is not None:
            self._sock.close()
        if self._proc is None or self._proc.returncode is not None:
            return
        try:
            await asyncio.wait_for(self._proc.wait(), timeout=grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()
