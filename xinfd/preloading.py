"""The spawner that forks CPU replicas from fork servers holding their engine's imports (``xinfd.forkserver``).

A replica's launch spec names the modules its engine's worker imports (``LaunchSpec.preload``; the engine's
``preload_modules``, set only for replicas placed on the CPU). Replicas with the same interpreter, preloads
and environment share one server: the first launch starts it (and pays the imports once), the next launches,
scale-ups and restarts fork from it and skip them. The environment is part of that key because libraries read
variables at import time (``HF_HOME``, ``HF_HUB_OFFLINE``...); only what differs between replicas of one
launch is left out of it, and the child gets its own values (``PER_REPLICA_ENV``).

Servers named by the ``preload_engines`` setting start with the daemon and stay; the others close after
``linger`` seconds with no replica. Whatever a server cannot do (its imports fail, a spec without preloads,
``fork_server = false``), the replica is exec'd as before, by the fallback spawner: a fork server only makes
launches faster, it never makes one fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from xinfd.fork_client import ForkServer, ForkServerError
from xinfd.processes import ProcessHandle, Spawner, SubprocessSpawner

log = logging.getLogger(__name__)

# Set per replica by the supervisor (its worker context, its GPUs, its thread budget); the server's copy would
# be the first replica's, so these are not part of a server's key and each child gets its own.
PER_REPLICA_ENV = ("XINFD_WORKER_CONTEXT", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                   "OPENBLAS_NUM_THREADS")
RETRY_AFTER_FAILURE_S = 300.0


@dataclass(frozen=True, slots=True)
class ServerKey:
    """What must be equal for two replicas to fork from one server."""

    python: str
    modules: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    # The interpreter file itself (inode, mtime; not followed: a venv's python is a symlink). A model venv
    # rebuilt at the same path is a new file, so a server holding the old venv's imports is not reused.
    interpreter: tuple[int, int] = (0, 0)

    @classmethod
    def of(cls, python: str, modules: tuple[str, ...], env: Mapping[str, str]) -> ServerKey:
        shared = tuple(sorted((k, v) for k, v in env.items() if k not in PER_REPLICA_ENV))
        try:
            info = os.lstat(python)
            interpreter = (info.st_ino, info.st_mtime_ns)
        except OSError:
            interpreter = (0, 0)
        return cls(python=python, modules=tuple(modules), env=shared, interpreter=interpreter)

    def server_env(self) -> dict[str, str]:
        """The server's own environment: the shared part, and no GPU (it must never initialise CUDA)."""
        return {**dict(self.env), "CUDA_VISIBLE_DEVICES": ""}

    def tag(self) -> str:
        import hashlib  # not at the daemon's start: it loads OpenSSL

        digest = hashlib.sha256(repr((self.python, self.modules, self.env)).encode()).hexdigest()
        return digest[:10]


def start_preloads(
    spawner: PreloadingSpawner, engines: Mapping[str, object], names: tuple[str, ...], env: Mapping[str, str]
) -> list[asyncio.Task[bool]]:
    """Start the fork servers the ``preload_engines`` setting names, for the daemon's own interpreter, in the
    background (the daemon is healthy meanwhile); an unknown engine, or one without preloads, is a warning."""
    tasks: list[asyncio.Task[bool]] = []
    for name in names:
        modules = tuple(getattr(engines.get(name), "preload_modules", ()) or ())
        if name not in engines or not modules:
            why = "no plugin provides it" if name not in engines else "its engine lists no preload_modules"
            log.warning("preload_engines: %s is not preloaded (%s)", name, why)
            continue
        tasks.append(asyncio.get_running_loop().create_task(spawner.prewarm(sys.executable, modules, env),
                                                             name=f"preload {name}"))
    return tasks


@dataclass(slots=True)
class _Entry:
    server: ForkServer
    pinned: bool
    linger_task: asyncio.Task[None] | None = None
    children: set[ProcessHandle] = field(default_factory=set)


class PreloadingSpawner:
    """``xinfd.processes.Spawner`` that forks from fork servers where it can and execs otherwise."""

    def __init__(
        self,
        *,
        log_dir: Path,
        enabled: bool = True,
        start_timeout: float = 600.0,
        linger: float = 300.0,
        fallback: Spawner | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log_dir = log_dir
        self.enabled = enabled
        self._start_timeout = start_timeout
        self._linger = linger
        self._fallback = fallback or SubprocessSpawner()
        self._entries: dict[ServerKey, _Entry] = {}
        self._starting: dict[ServerKey, asyncio.Task[_Entry]] = {}
        self._refused: dict[ServerKey, tuple[float, str]] = {}
        self._clock = clock
        self._watches: set[asyncio.Task[None]] = set()

    async def spawn(
        self, argv: tuple[str, ...], *, env: Mapping[str, str], cwd: str | None, log_path: Path,
        preload: tuple[str, ...] = (),
    ) -> ProcessHandle:
        if not (self.enabled and preload and len(argv) >= 3 and argv[1] == "-m"):
            return await self._fallback.spawn(argv, env=env, cwd=cwd, log_path=log_path)
        key = ServerKey.of(argv[0], preload, env)
        entry = await self._server(key, pinned=False)
        if entry is None:
            return await self._fallback.spawn(argv, env=env, cwd=cwd, log_path=log_path)
        if entry.linger_task is not None:
            entry.linger_task.cancel()
            entry.linger_task = None
        try:
            handle = await entry.server.spawn(argv, env=env, cwd=cwd, log_path=log_path)
        except ForkServerError as exc:
            log.warning("fork server %s could not fork %s (%s); starting it the ordinary way",
                        entry.server.pid, " ".join(argv), exc)
            return await self._fallback.spawn(argv, env=env, cwd=cwd, log_path=log_path)
        entry.children.add(handle)
        watch = asyncio.get_running_loop().create_task(self._forget_when_done(key, entry, handle))
        self._watches.add(watch)
        watch.add_done_callback(self._watches.discard)
        return handle

    async def prewarm(self, python: str, modules: tuple[str, ...], env: Mapping[str, str]) -> bool:
        """Start (and keep) the server replicas of ``python`` with ``modules`` and ``env`` will fork from."""
        if not (self.enabled and modules):
            return False
        return await self._server(ServerKey.of(python, modules, env), pinned=True) is not None

    def servers(self) -> list[dict[str, object]]:
        """What ``xinfctl``'s views show of the running servers."""
        return [
            {"pid": e.server.pid, "python": k.python, "modules": list(k.modules), "pinned": e.pinned,
             "replicas": e.server.children, "import_seconds": e.server.import_seconds}
            for k, e in self._entries.items() if e.server.alive
        ]

    async def close(self) -> None:
        """Stop every server (after the replicas: a server's children die with it)."""
        for task in self._starting.values():
            task.cancel()
        entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            if entry.linger_task is not None:
                entry.linger_task.cancel()
            await entry.server.close()

    async def _server(self, key: ServerKey, *, pinned: bool) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.server.alive:
            entry.pinned = entry.pinned or pinned
            return entry
        refused = self._refused.get(key)
        if refused is not None and self._clock() - refused[0] < RETRY_AFTER_FAILURE_S:
            return None
        task = self._starting.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._start(key, pinned))
            self._starting[key] = task
            task.add_done_callback(lambda _: self._starting.pop(key, None))
        try:
            entry = await asyncio.shield(task)
        except ForkServerError as exc:
            if key not in self._refused or self._refused[key][0] < self._clock() - RETRY_AFTER_FAILURE_S:
                log.warning("fork server for %s (%s) did not start: %s; replicas start the ordinary way",
                            key.python, ", ".join(key.modules), exc)
            self._refused[key] = (self._clock(), str(exc))
            return None
        entry.pinned = entry.pinned or pinned
        return entry

    async def _start(self, key: ServerKey, pinned: bool) -> _Entry:
        server = ForkServer(key.python, key.modules, key.server_env(),
                            self._log_dir / f"forkserver-{key.tag()}.log")
        started = self._clock()
        await server.start(self._start_timeout)
        log.info("fork server %s ready: %s imported %s in %.2fs", server.pid, key.python, ", ".join(key.modules),
                 self._clock() - started)
        entry = _Entry(server=server, pinned=pinned)
        self._entries[key] = entry
        self._refused.pop(key, None)
        if not pinned:  # until its first fork cancels it: a launch cancelled meanwhile must not leave it for good
            entry.linger_task = asyncio.get_running_loop().create_task(self._close_after_linger(key, entry))
        return entry

    async def _forget_when_done(self, key: ServerKey, entry: _Entry, handle: ProcessHandle) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await handle.wait()
        entry.children.discard(handle)
        if entry.children or entry.pinned or self._entries.get(key) is not entry:
            return
        if entry.linger_task is None:
            entry.linger_task = asyncio.get_running_loop().create_task(self._close_after_linger(key, entry))

    async def _close_after_linger(self, key: ServerKey, entry: _Entry) -> None:
        await asyncio.sleep(self._linger)
        if entry.children or entry.pinned:
            return
        if self._entries.get(key) is entry:
            del self._entries[key]
        log.info("fork server %s closed after %.0fs without replicas", entry.server.pid, self._linger)
        await entry.server.close()
