"""ModelManager: launch, list and terminate models, each served by N supervised replicas.

A launch runs as a task owned by the manager, not by the client that asked for it: a dropped ``xinfctl`` does
not abort a launch half-way, and ``terminate`` can cancel a launch still in progress. Progress is published as
events (dicts) that the control API streams as NDJSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from xinfd.errors import (
    EngineUnavailableError,
    InvalidRequestError,
    LaunchError,
    ModelExistsError,
    ShuttingDownError,
    UnknownModelError,
)
from xinfd.plugins import Plugins
from xinfd.processes import Spawner
from xinfd.replicas import Replica, ReplicaState, RestartPolicy
from xinfd.router import Router
from xinfd.types import ModelSpec, Platform, ReplicaContext

log = logging.getLogger(__name__)

_UID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Variables the daemon owns for each replica; a user --env must not silently undo the slot table.
_RESERVED_ENV = frozenset({"CUDA_VISIBLE_DEVICES", "XINFD_WORKER_CONTEXT"})
MAX_REPLICAS = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchRequest:
    """A validated launch request (from the control API or the start-up ``--launch`` list)."""

    model_name: str
    model_engine: str | None = None
    replica: int = 1
    model_uid: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    # None: follow XINFERENCE_ENABLE_VIRTUAL_ENV; True/False: --enable-virtual-env / --disable-virtual-env.
    enable_virtual_env: bool | None = None
    # --virtual-env-package/-vp: added to the model's venv packages, replacing an entry of the same name.
    virtual_env_packages: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, body: Any) -> LaunchRequest:
        """Validate a JSON body; every problem is an ``InvalidRequestError`` naming the field."""
        if not isinstance(body, dict):
            raise InvalidRequestError("launch request must be a JSON object")
        unknown = set(body) - {"model_name", "model_engine", "replica", "model_uid", "env", "options",
                               "enable_virtual_env", "virtual_env_packages"}
        if unknown:
            raise InvalidRequestError(f"unknown field(s): {', '.join(sorted(unknown))}", param=min(unknown))
        name = body.get("model_name")
        if not isinstance(name, str) or not _UID_RE.match(name):
            raise InvalidRequestError(f"model_name must be a simple name, got {name!r}", param="model_name")
        engine = body.get("model_engine")
        if engine is not None and (not isinstance(engine, str) or not engine):
            raise InvalidRequestError(f"model_engine must be a string, got {engine!r}", param="model_engine")
        replica = body.get("replica", 1)
        if isinstance(replica, bool) or not isinstance(replica, int) or not 1 <= replica <= MAX_REPLICAS:
            raise InvalidRequestError(f"replica must be an integer 1..{MAX_REPLICAS}, got {replica!r}", param="replica")
        uid = body.get("model_uid")
        if uid is not None and (not isinstance(uid, str) or not _UID_RE.match(uid)):
            raise InvalidRequestError(
                f"model_uid must match {_UID_RE.pattern} (it names files), got {uid!r}", param="model_uid"
            )
        env = {} if body.get("env") is None else body["env"]
        if not isinstance(env, dict):
            raise InvalidRequestError("env must be an object of NAME: value", param="env")
        for key, value in env.items():
            if not _ENV_NAME_RE.match(key) or not isinstance(value, str) or "\0" in value:
                raise InvalidRequestError(f"invalid environment variable {key!r}={value!r}", param="env")
            if key in _RESERVED_ENV:
                raise InvalidRequestError(f"{key} is set by xinfd for each replica; it cannot be overridden", param="env")
        options = {} if body.get("options") is None else body["options"]
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise InvalidRequestError("options must be an object", param="options")
        enable_venv = body.get("enable_virtual_env")
        if enable_venv is not None and not isinstance(enable_venv, bool):
            raise InvalidRequestError("enable_virtual_env must be true, false or null", param="enable_virtual_env")
        packages = body.get("virtual_env_packages") or []
        if not isinstance(packages, list) or not all(isinstance(p, str) and p.strip() for p in packages):
            raise InvalidRequestError("virtual_env_packages must be a list of requirement strings",
                                      param="virtual_env_packages")
        return cls(model_name=name, model_engine=engine, replica=replica, model_uid=uid, env=env, options=options,
                   enable_virtual_env=enable_venv, virtual_env_packages=tuple(packages))


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaEnvironment:
    """The interpreter (and extra variables) the replicas of one model run with: a model venv or the daemon's."""

    python: str
    env: Mapping[str, str] = field(default_factory=dict)
    venv_path: str | None = None


Publish = Callable[[dict[str, Any]], Awaitable[None]]


class EnvironmentProvider(Protocol):
    """Prepares the environment of a model before its replicas start (``xinfd.venvs`` builds model venvs)."""

    async def prepare(self, model: RunningModel, publish: Publish) -> ReplicaEnvironment:
        """Build or reuse the environment; progress goes through ``publish``. Cancellable."""
        ...

    def release(self, model: RunningModel) -> None:
        """The model's replicas are gone: its environment is no longer in use by it."""
        ...


class SystemEnvironment:
    """Replicas run with the daemon's own interpreter (virtual environments disabled)."""

    async def prepare(self, model: RunningModel, publish: Publish) -> ReplicaEnvironment:
        return ReplicaEnvironment(python=sys.executable)

    def release(self, model: RunningModel) -> None:
        return None


class RunningModel:
    """A launched model: its replicas, its router, and the launch's event log."""

    def __init__(self, *, uid: str, spec: ModelSpec, engine: str, request: LaunchRequest) -> None:
        self.uid = uid
        self.spec = spec
        self.engine = engine
        self.request = request
        self.replicas: list[Replica] = []
        self.router = Router()
        self.created = time.time()
        self.events: list[dict[str, Any]] = []
        self.launch_task: asyncio.Task[None] | None = None
        self.terminating = False
        self.launch_error: str | None = None
        self.environment = ReplicaEnvironment(python=sys.executable)
        self._changed = asyncio.Condition()

    @property
    def state(self) -> str:
        """LAUNCHING until every replica started once; then READY, DEGRADED (some down) or FAILED."""
        if self.terminating:
            return "TERMINATING"
        if self.launch_error is not None:
            return "FAILED"
        if self.launch_task is not None and not self.launch_task.done():
            return "LAUNCHING"
        states = [r.state for r in self.replicas]
        if states and all(s is ReplicaState.READY for s in states):
            return "READY"
        if any(s is ReplicaState.READY for s in states):
            return "DEGRADED"
        return "FAILED" if states and all(s is ReplicaState.FAILED for s in states) else "RECOVERING"

    async def publish(self, event: dict[str, Any]) -> None:
        event = {"model_uid": self.uid, "time": round(time.time(), 3), **event}
        self.events.append(event)
        async with self._changed:
            self._changed.notify_all()

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        """Every launch event so far, then new ones, until a terminal event (``ready`` or ``error``)."""
        sent = 0
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.events) > sent)
            while sent < len(self.events):
                event = self.events[sent]
                sent += 1
                yield event
                if event["event"] in ("ready", "error"):
                    return

    def snapshot(self) -> dict[str, Any]:
        return {
            "model_uid": self.uid,
            "model_name": self.spec.name,
            "model_engine": self.engine,
            "abilities": list(self.spec.abilities),
            "state": self.state,
            "created": round(self.created, 3),
            "replica": self.request.replica,
            "options": dict(self.request.options),
            "env": sorted(self.request.env),
            "error": self.launch_error,
            "replicas": [r.snapshot() for r in self.replicas],
        }


class ModelManager:
    """Owns every running model; the control API and the front end go through it."""

    def __init__(
        self,
        *,
        plugins: Plugins,
        platform: Platform,
        home: Path,
        spawner: Spawner,
        stop_grace: float,
        launch_timeout: float,
        restart: RestartPolicy | None = None,
        base_env: Mapping[str, str] | None = None,
        environments: EnvironmentProvider | None = None,
    ) -> None:
        self._environments: EnvironmentProvider = environments or SystemEnvironment()
        self.plugins = plugins
        self.platform = platform
        self.home = home
        self._spawner = spawner
        self._stop_grace = stop_grace
        self._launch_timeout = launch_timeout
        self._restart = restart
        self._base_env = dict(os.environ if base_env is None else base_env)
        self.models: dict[str, RunningModel] = {}
        self.run_dir = _runtime_dir(home)
        self.log_dir = home / "logs"
        self._closing = False

    def families(self) -> dict[str, ModelSpec]:
        return dict(self.plugins.models)

    def get(self, uid: str) -> RunningModel:
        try:
            return self.models[uid]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none running"
            raise UnknownModelError(f"model {uid!r} is not running ({known})") from None

    def choose_engine(self, spec: ModelSpec, wanted: str | None) -> str:
        """The requested engine if it can serve the model here, else the first available one of the model."""
        if wanted is not None:
            self.plugins.engine(wanted)
            if wanted not in spec.engines:
                raise EngineUnavailableError(
                    f"model {spec.name!r} does not support engine {wanted!r} (supported: {', '.join(spec.engines)})"
                )
            avail = self.plugins.availability(wanted, spec, self.platform)
            if not avail.available:
                raise EngineUnavailableError(f"engine {wanted!r} is unavailable: {avail.reason}")
            return wanted
        reasons = []
        for engine in spec.engines:
            if engine not in self.plugins.engines:
                reasons.append(f"{engine}: not installed")
                continue
            avail = self.plugins.availability(engine, spec, self.platform)
            if avail.available:
                return engine
            reasons.append(f"{engine}: {avail.reason}")
        raise EngineUnavailableError(f"no engine can serve {spec.name!r} here ({'; '.join(reasons)})")

    def start_launch(self, request: LaunchRequest) -> RunningModel:
        """Validate, register the model and start its launch task; returns at once."""
        if self._closing:
            raise ShuttingDownError("xinfd is shutting down")
        spec = self.plugins.models.get(request.model_name)
        if spec is None:
            known = ", ".join(sorted(self.plugins.models)) or "none"
            raise UnknownModelError(f"unknown model {request.model_name!r} (known: {known})", param="model_name")
        uid = request.model_uid or request.model_name
        if uid in self.models:
            raise ModelExistsError(f"model uid {uid!r} is already launched; terminate it or pick another uid")
        engine = self.choose_engine(spec, request.model_engine)
        model = RunningModel(uid=uid, spec=spec, engine=engine, request=request)
        # Ask the engine for replica 0's launch spec now, so a bad option is a 400 before anything starts.
        self.plugins.launch_spec(engine, spec, self._replica_context(model, 0, port=0))
        self.models[uid] = model
        model.launch_task = asyncio.create_task(self._launch(model), name=f"launch {uid}")
        return model

    async def _launch(self, model: RunningModel) -> None:
        started = time.monotonic()
        await model.publish(
            {"event": "launching", "message": f"launching {model.uid} ({model.spec.name}, engine {model.engine}, "
             f"{model.request.replica} replica(s))"}
        )
        try:
            model.environment = await self._environments.prepare(model, model.publish)
            model.replicas = [self._make_replica(model, i) for i in range(model.request.replica)]
            await asyncio.gather(*(self._start_replica(model, r) for r in model.replicas))
        except Exception as exc:
            model.launch_error = str(exc)
            await self._stop_replicas(model)
            self.models.pop(model.uid, None)
            log.error("launch of %s failed: %s", model.uid, exc)
            await model.publish({"event": "error", "code": getattr(exc, "code", "launch_failed"), "message": str(exc)})
            return
        except asyncio.CancelledError:
            model.launch_error = "launch cancelled"
            await self._stop_replicas(model)
            await model.publish({"event": "error", "code": "launch_cancelled", "message": "launch cancelled"})
            raise
        await model.publish(
            {"event": "ready", "message": f"{model.uid} ready in {time.monotonic() - started:.2f}s",
             "model": model.snapshot()}
        )

    async def _start_replica(self, model: RunningModel, replica: Replica) -> None:
        await model.publish({"event": "replica_starting", "replica": replica.index,
                             "message": f"starting replica {replica.label}"})
        await replica.start()
        await model.publish({"event": "replica_ready", "replica": replica.index, "pid": replica.pid,
                             "message": f"replica {replica.label} ready (pid {replica.pid})"})

    def _replica_context(self, model: RunningModel, index: int, *, port: int) -> ReplicaContext:
        return ReplicaContext(
            model_uid=model.uid,
            model_name=model.spec.name,
            engine=model.engine,
            replica_index=index,
            socket_path=str(self.run_dir / f"{model.uid}-r{index}.sock"),
            python=model.environment.python,
            options=dict(model.request.options),
            env=dict(model.request.env),
            log_dir=str(self.log_dir),
            port=port,
        )

    def _make_replica(self, model: RunningModel, index: int) -> Replica:
        label = f"{model.uid}-r{index}"
        port = free_loopback_port()
        context = self._replica_context(model, index, port=port)

        def make_spec() -> Any:
            spec = self.plugins.launch_spec(model.engine, model.spec, context)
            if spec.readiness.timeout_s > self._launch_timeout:
                from dataclasses import replace

                spec = replace(spec, readiness=replace(spec.readiness, timeout_s=self._launch_timeout))
            return spec

        # No GPU is assigned yet to this replica: hide every GPU so a CPU engine cannot grab one by accident.
        env = {**self._base_env, **model.environment.env, **model.request.env, "CUDA_VISIBLE_DEVICES": ""}
        return Replica(
            model_uid=model.uid,
            index=index,
            port=port,
            socket_path=Path(context.socket_path),
            log_path=self.log_dir / f"{label}.log",
            make_spec=make_spec,
            env=env,
            spawner=self._spawner,
            stop_grace=self._stop_grace,
            restart=self._restart,
        )

    async def terminate(self, uid: str) -> dict[str, Any]:
        """Stop every replica of ``uid`` (cancelling its launch if still running) and forget the model."""
        model = self.get(uid)
        model.terminating = True
        if model.launch_task is not None and not model.launch_task.done():
            model.launch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await model.launch_task
        await self._stop_replicas(model)
        self.models.pop(uid, None)
        log.info("model %s terminated", uid)
        return model.snapshot()

    async def _stop_replicas(self, model: RunningModel) -> None:
        await asyncio.gather(*(r.stop() for r in model.replicas), return_exceptions=True)
        self._environments.release(model)

    async def close(self) -> None:
        """Refuse new launches and stop every model (daemon shutdown)."""
        self._closing = True
        await asyncio.gather(*(self.terminate(uid) for uid in list(self.models)), return_exceptions=True)

    def list(self) -> list[dict[str, Any]]:
        return [m.snapshot() for m in self.models.values()]

    async def wait_until_launched(self, model: RunningModel) -> RunningModel:
        """Wait for a launch to end; raise its error if it failed."""
        if model.launch_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(model.launch_task)
        if model.launch_error is not None:
            raise LaunchError(model.launch_error)
        return model


def free_loopback_port() -> int:
    """A loopback TCP port that is free now (for engines that cannot serve on a Unix socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _runtime_dir(home: Path) -> Path:
    """Where replica sockets live: under the home, unless that path is too long for a Unix socket (108 bytes)."""
    candidate = home / "run"
    if len(str(candidate)) + 80 > 104:
        digest = hashlib.sha256(str(home).encode()).hexdigest()[:12]
        candidate = Path(tempfile.gettempdir()) / f"xinfd-{os.getuid()}-{digest}"
    candidate.mkdir(parents=True, exist_ok=True, mode=0o700)
    return candidate
