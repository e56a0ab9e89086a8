"""One replica: spawn, readiness, supervision of its exit, restart with backoff, graceful stop.

The life of a replica is one small state machine; every change goes through ``transition()``, which logs one
fixed-form line, so an operator can grep a replica's whole history::

    replica echo-r0 STARTING -> READY (pid 1234, ready in 0.41s)

Over 400 lines: the state machine, its supervision loop and the stop path share the replica's private state;
the health probing is the next piece to split into its own module.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from xinfd.errors import LaunchError
from xinfd.orphans import remove_pid_file, write_pid_file
from xinfd.processes import ProcessHandle, Spawner, stop_group
from xinfd.types import LaunchSpec, replica_label

log = logging.getLogger(__name__)


class ReplicaState(enum.Enum):
    STARTING = "STARTING"
    READY = "READY"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


# Which changes are legal; anything else is a bug in the supervisor and raises.
_ALLOWED: dict[ReplicaState, frozenset[ReplicaState]] = {
    ReplicaState.STOPPED: frozenset({ReplicaState.STARTING}),
    ReplicaState.STARTING: frozenset(
        {ReplicaState.READY, ReplicaState.BACKOFF, ReplicaState.FAILED, ReplicaState.STOPPING}
    ),
    ReplicaState.READY: frozenset({ReplicaState.BACKOFF, ReplicaState.FAILED, ReplicaState.STOPPING}),
    ReplicaState.BACKOFF: frozenset({ReplicaState.STARTING, ReplicaState.FAILED, ReplicaState.STOPPING}),
    ReplicaState.STOPPING: frozenset({ReplicaState.STOPPED}),
    ReplicaState.FAILED: frozenset({ReplicaState.STARTING, ReplicaState.STOPPING}),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartPolicy:
    """Exponential backoff between restarts, and how many restarts in a row before giving up."""

    initial_delay: float = 0.5
    max_delay: float = 30.0
    budget: int = 5
    # A replica that stayed READY this long has its restart count reset (it was healthy, not crash-looping).
    stable_after: float = 60.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.initial_delay * 2.0 ** max(0, attempt - 1))


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthPolicy:
    """Health probes of a READY replica (the XINFERENCE_HEALTH_CHECK_* settings).

    A probe is ``GET /health`` through the replica's serving path (its socket and its HTTP server loop), so a
    replica whose loop is stuck, or that was SIGSTOPped, fails probes even though its process still exists.
    After ``failure_threshold`` consecutive failures the group is killed and restarted like a crash.
    """

    interval: float = 5.0
    timeout: float = 10.0
    failure_threshold: int = 5
    enabled: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitInfo:
    """How a replica process ended, kept for ``xinfctl list`` and failure messages."""

    returncode: int
    stderr_tail: tuple[str, ...]
    # Why the daemon killed it, when it did (failed health checks); empty for a crash.
    cause: str = ""

    def describe(self) -> str:
        code = self.returncode
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        if self.cause:
            how = f"{self.cause}; {how}"
        tail = " | ".join(line for line in self.stderr_tail[-5:] if line.strip())
        return f"{how}: {tail}" if tail else how


Clock = Callable[[], float]
Listener = Callable[["Replica", ReplicaState, ReplicaState, str], None]


class Replica:
    """A supervised replica process serving one model on its own Unix socket."""

    def __init__(
        self,
        *,
        model_uid: str,
        index: int,
        socket_path: Path,
        log_path: Path,
        make_spec: Callable[[], LaunchSpec],
        env: Mapping[str, str],
        spawner: Spawner,
        stop_grace: float,
        restart: RestartPolicy | None = None,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], Any] = asyncio.sleep,
        listener: Listener | None = None,
        gpu_indices: tuple[int, ...] = (),
        port: int = 0,
        health: HealthPolicy | None = None,
        pid_file: Path | None = None,
    ) -> None:
        self.model_uid = model_uid
        self._health = health or HealthPolicy(enabled=False)
        self.pid_file = pid_file
        self.health_failures = 0
        self.port = port
        self.index = index
        self.socket_path = socket_path
        self.log_path = log_path
        self.gpu_indices = gpu_indices
        self._make_spec = make_spec
        self._env = dict(env)
        self._spawner = spawner
        self._stop_grace = stop_grace
        self._restart = restart or RestartPolicy()
        self._clock = clock
        self._sleep = sleep
        self._listener = listener
        self.state = ReplicaState.STOPPED
        self.handle: ProcessHandle | None = None
        self.spec: LaunchSpec | None = None
        self.restarts = 0
        self.last_exit: ExitInfo | None = None
        self.failure: str | None = None
        self.outstanding = 0
        self.served = 0
        self.ready_since: float | None = None
        # Library versions the replica reports having imported (its ``/health`` body's ``libraries``; empty for
        # servers that report none), read at readiness so ``xinfctl list`` shows what each venv really runs.
        self.libraries: dict[str, str] = {}
        self._session: aiohttp.ClientSession | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._ready_event = asyncio.Event()

    @property
    def label(self) -> str:
        return replica_label(self.model_uid, self.index)

    @property
    def pid(self) -> int | None:
        return self.handle.pid if self.handle and self.handle.returncode is None else None

    @property
    def is_ready(self) -> bool:
        return self.state is ReplicaState.READY

    @property
    def api_prefix(self) -> str:
        return self.spec.api_prefix if self.spec else "/v1"

    def transition(self, new: ReplicaState, reason: str) -> None:
        """The one place the state changes; logs ``replica LABEL OLD -> NEW (reason)``."""
        old = self.state
        if new not in _ALLOWED[old]:
            raise RuntimeError(f"replica {self.label}: illegal transition {old.value} -> {new.value}")
        self.state = new
        log.info("replica %s %s -> %s (%s)", self.label, old.value, new.value, reason)
        if new is ReplicaState.READY:
            self.ready_since = self._clock()
            self._ready_event.set()
        else:
            self._ready_event.clear()
        if self._listener is not None:
            self._listener(self, old, new, reason)

    @property
    def uses_tcp(self) -> bool:
        return self.spec is not None and self.spec.listen == "tcp"

    @property
    def base_url(self) -> str:
        """URL prefix of the replica's server (the host part is ignored on a Unix socket)."""
        return f"http://127.0.0.1:{self.port}" if self.uses_tcp else "http://replica"

    def session(self) -> aiohttp.ClientSession:
        """HTTP session bound to this replica's socket (pooled connections for proxying)."""
        if self._session is None or self._session.closed:
            connector: aiohttp.BaseConnector
            if self.uses_tcp:
                connector = aiohttp.TCPConnector(limit=0)
            else:
                connector = aiohttp.UnixConnector(path=str(self.socket_path), limit=0)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=5)
            )
        return self._session

    async def start(self) -> None:
        """Spawn and wait until ready; raises ``LaunchError`` (process left stopped) if it cannot start.

        After a successful start, a supervisor task watches the process and restarts it with backoff.
        """
        self.transition(ReplicaState.STARTING, "launch")
        try:
            await self._spawn_and_wait_ready()
        except BaseException as exc:
            await self._kill_current()
            reason = str(exc) if isinstance(exc, LaunchError) else f"cancelled: {type(exc).__name__}"
            self.failure = reason
            if self.state is not ReplicaState.STOPPING:
                self.transition(ReplicaState.FAILED, reason)
            raise
        self._supervisor = asyncio.create_task(self._supervise(), name=f"supervise {self.label}")

    async def _spawn_and_wait_ready(self) -> None:
        spec = self._make_spec()
        if self.spec is not None and self.spec.listen != spec.listen and self._session is not None:
            await self._session.close()
        self.spec = spec
        env = {**self._env, **spec.env}
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        started = self._clock()
        self.handle = await self._spawner.spawn(
            spec.argv, env=env, cwd=spec.cwd, log_path=self.log_path, preload=spec.preload
        )
        if self.pid_file is not None:  # before waiting: a daemon killed during the load must find this group
            write_pid_file(self.pid_file, self.handle.pid)
        log.info("replica %s spawned pid %s: %s", self.label, self.handle.pid, " ".join(spec.argv))
        await self._wait_ready(spec)
        self.transition(ReplicaState.READY, f"pid {self.handle.pid}, ready in {self._clock() - started:.2f}s")

    async def _wait_ready(self, spec: LaunchSpec) -> None:
        assert self.handle is not None
        handle = self.handle
        exited = asyncio.ensure_future(handle.wait())
        deadline = self._clock() + spec.readiness.timeout_s
        try:
            while True:
                if exited.done():
                    info = ExitInfo(returncode=exited.result(), stderr_tail=tuple(handle.stderr_tail()))
                    self.last_exit = info
                    raise LaunchError(f"replica {self.label} exited during start ({info.describe()})")
                body = await self.probe_body(timeout=min(5.0, spec.readiness.timeout_s), path=spec.readiness.path)
                if body is not None:
                    # xinfd's worker host reports the versions of the libraries it imported in its /health body.
                    self.libraries = _libraries(body)
                    return
                if self._clock() > deadline:
                    raise LaunchError(
                        f"replica {self.label} not ready after {spec.readiness.timeout_s:.0f}s "
                        f"(GET {spec.readiness.path} on "
                        f"{self.base_url if self.uses_tcp else self.socket_path})"
                    )
                await asyncio.wait({exited}, timeout=spec.readiness.interval_s)
        finally:
            if not exited.done():
                exited.cancel()

    async def probe(self, *, timeout: float, path: str = "/health") -> bool:
        """One readiness/health probe through the replica's serving path."""
        return await self.probe_body(timeout=timeout, path=path) is not None

    async def probe_body(self, *, timeout: float, path: str = "/health") -> dict[str, Any] | None:
        """The JSON object a 200 probe answered (``{}`` for an empty or non-JSON body, as vLLM's), else None."""
        if not self.uses_tcp and not self.socket_path.exists():
            return None
        try:
            async with self.session().get(
                f"{self.base_url}{path}", timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                if resp.status != 200:
                    return None
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    return {}
                return body if isinstance(body, dict) else {}
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    async def _watch(self) -> tuple[int, str]:
        """Wait for the process to exit, probing its health meanwhile; returns (exit status, kill cause).

        A replica that fails ``failure_threshold`` probes in a row is hung (or wedged): its group gets SIGKILL
        (SIGTERM would stay pending on a stopped process) and the exit is handled like a crash.
        """
        assert self.handle is not None
        handle = self.handle
        exited = asyncio.ensure_future(handle.wait())
        policy = self._health
        self.health_failures = 0
        probe: asyncio.Future[bool] | None = None
        try:
            while policy.enabled:
                done, _ = await asyncio.wait({exited}, timeout=policy.interval)
                if done:
                    break
                probe = asyncio.ensure_future(self.probe(timeout=policy.timeout))
                done, _ = await asyncio.wait({exited, probe}, return_when=asyncio.FIRST_COMPLETED)
                if exited.done():
                    break
                if probe.result():
                    self.health_failures = 0
                    continue
                self.health_failures += 1
                log.warning("replica %s failed health check %d/%d", self.label, self.health_failures,
                            policy.failure_threshold)
                if self.health_failures >= policy.failure_threshold:
                    cause = f"unhealthy: {self.health_failures} health checks failed in a row"
                    handle.signal_group(signal.SIGKILL)
                    return await exited, cause
            return await exited, ""
        finally:
            for pending in (exited, probe):  # a stop cancels this task mid-probe: leave nothing running
                if pending is not None and not pending.done():
                    pending.cancel()

    async def _supervise(self) -> None:
        """Wait for an unexpected exit and restart with backoff until the budget runs out."""
        while not self._stopping:
            assert self.handle is not None
            code, cause = await self._watch()
            if self._stopping:
                return
            info = ExitInfo(returncode=code, stderr_tail=tuple(self.handle.stderr_tail()), cause=cause)
            self.last_exit = info
            await self._kill_current()  # grandchildren of the dead leader must not keep the slot
            since = self.ready_since
            if since is not None and self._clock() - since >= self._restart.stable_after:
                self.restarts = 0
            if self.restarts >= self._restart.budget:
                self.failure = f"restart budget ({self._restart.budget}) exhausted; last {info.describe()}"
                self.transition(ReplicaState.FAILED, self.failure)
                return
            self.restarts += 1
            delay = self._restart.delay(self.restarts)
            self.transition(ReplicaState.BACKOFF,
                            f"{info.describe()}; restart {self.restarts} in {delay:.1f}s")
            await self._sleep(delay)
            if self._stopping:
                return
            self.transition(ReplicaState.STARTING, f"restart {self.restarts}")
            try:
                await self._spawn_and_wait_ready()
            except LaunchError as exc:
                await self._kill_current()
                self.failure = str(exc)
                # A failed restart counts like a crash: the loop goes STARTING -> BACKOFF (or FAILED when the
                # budget is spent) with the exit just seen.
                self.handle = _ExitedHandle(self.handle, self.last_exit)

    async def wait_ready(self) -> None:
        await self._ready_event.wait()

    async def _kill_current(self) -> None:
        if self.handle is not None:
            grace = self._stop_grace
            stop_signal = self.spec.stop_signal if self.spec else 15
            await stop_group(self.handle, stop_signal=stop_signal, grace=grace)
        # The whole group is gone: no orphan to kill at the next start.
        if self.pid_file is not None:
            remove_pid_file(self.pid_file)

    async def stop(self) -> None:
        """Stop for good: signal the group, wait the grace period, SIGKILL; idempotent."""
        if self.state in (ReplicaState.STOPPED, ReplicaState.STOPPING):
            return
        self._stopping = True
        self.transition(ReplicaState.STOPPING, "stop requested")
        if self._supervisor is not None and not self._supervisor.done():
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        await self._kill_current()
        if self._session is not None:
            await self._session.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        code = self.handle.returncode if self.handle else None
        self.transition(ReplicaState.STOPPED, f"exit status {code}")

    def snapshot(self) -> dict[str, Any]:
        """What ``xinfctl list`` shows of this replica."""
        return {
            "index": self.index,
            "label": self.label,
            "state": self.state.value,
            "pid": self.pid,
            "restarts": self.restarts,
            "outstanding": self.outstanding,
            "served": self.served,
            "gpu_indices": list(self.gpu_indices),
            "socket": str(self.socket_path),
            "log": str(self.log_path),
            "last_exit": self.last_exit.describe() if self.last_exit else None,
            "exit_status": self.last_exit.returncode if self.last_exit else None,
            "stderr_tail": list(self.last_exit.stderr_tail) if self.last_exit else [],
            "health_failures": self.health_failures,
            "failure": self.failure,
            "libraries": dict(self.libraries),
        }


class _ExitedHandle:
    """Stands in for a process that failed to become ready, so the supervise loop sees an immediate exit."""

    def __init__(self, previous: ProcessHandle | None, info: ExitInfo | None) -> None:
        self._pid = previous.pid if previous else -1
        self._info = info or ExitInfo(returncode=1, stderr_tail=())

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._info.returncode

    async def wait(self) -> int:
        return self._info.returncode

    def signal_group(self, sig: int) -> None:
        return None

    def group_alive(self) -> bool:
        return False

    def stderr_tail(self) -> list[str]:
        return list(self._info.stderr_tail)


def _libraries(body: dict[str, Any]) -> dict[str, str]:
    found = body.get("libraries")
    if not isinstance(found, dict):
        return {}
    return {str(k): str(v) for k, v in found.items() if isinstance(k, str) and isinstance(v, str)}
