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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from xinfd.desired_state import DesiredState
from xinfd.errors import (
    EngineUnavailableError,
    InvalidRequestError,
    LaunchError,
    ModelExistsError,
    ShuttingDownError,
    UnknownModelError,
    XinfdError,
)
from xinfd.gpus import NGpu, Placement, SlotTable, cuda_visible_devices, nvml_free_memory
from xinfd.orphans import pid_dir
from xinfd.plugins import Plugins
from xinfd.processes import Spawner
from xinfd.replicas import HealthPolicy, Replica, ReplicaState, RestartPolicy
from xinfd.router import Router
from xinfd.types import ModelSpec, Platform, ReplicaContext
from xinfd.venvs.python import check_python_request
from xinfd.venvs.spec import check_package

if TYPE_CHECKING:
    from xinfd.config import Settings

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
    # --python: the model venv's interpreter (a version like 3.12 or an absolute path); None: the daemon's.
    python: str | None = None
    # GPUs per replica ("auto": one each when the host has GPUs, else none) and explicit placement (issue 4).
    n_gpu: NGpu = "auto"
    gpu_idx: tuple[int, ...] | None = None

    @classmethod
    def from_json(cls, body: Any) -> LaunchRequest:
        """Validate a JSON body; every problem is an ``InvalidRequestError`` naming the field."""
        if not isinstance(body, dict):
            raise InvalidRequestError("launch request must be a JSON object")
        unknown = set(body) - {"model_name", "model_engine", "replica", "model_uid", "env", "options",
                               "enable_virtual_env", "virtual_env_packages", "n_gpu", "gpu_idx", "python"}
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
            raise InvalidRequestError(f"replica must be an integer 1..{MAX_REPLICAS}, got {replica!r}",
                                      param="replica")
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
                raise InvalidRequestError(f"{key} is set by xinfd for each replica; it cannot be overridden",
                                          param="env")
        options = {} if body.get("options") is None else body["options"]
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise InvalidRequestError("options must be an object", param="options")
        enable_venv = body.get("enable_virtual_env")
        if enable_venv is not None and not isinstance(enable_venv, bool):
            raise InvalidRequestError("enable_virtual_env must be true, false or null",
                                      param="enable_virtual_env")
        packages = body.get("virtual_env_packages") or []
        if not isinstance(packages, list) or not all(isinstance(p, str) and p.strip() for p in packages):
            raise InvalidRequestError("virtual_env_packages must be a list of requirement strings",
                                      param="virtual_env_packages")
        for package in packages:  # PEP 508 or a documented placeholder, never an installer option (issue 3)
            check_package(package)
        python = None if body.get("python") is None else check_python_request(body["python"])
        n_gpu = body.get("n_gpu", "auto")
        if n_gpu != "auto" and (isinstance(n_gpu, bool) or not isinstance(n_gpu, int) or n_gpu < 0):
            raise InvalidRequestError(f"n_gpu must be 'auto' or an integer >= 0, got {n_gpu!r}",
                                      param="n_gpu")
        gpu_idx = body.get("gpu_idx")
        if gpu_idx is not None and (
            not isinstance(gpu_idx, list) or not gpu_idx
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in gpu_idx)
        ):
            raise InvalidRequestError(f"gpu_idx must be a non-empty list of GPU indices, got {gpu_idx!r}",
                                      param="gpu_idx")
        return cls(model_name=name, model_engine=engine, replica=replica, model_uid=uid, env=env,
                   options=options, enable_virtual_env=enable_venv, virtual_env_packages=tuple(packages),
                   python=python, n_gpu=n_gpu,
                   gpu_idx=tuple(gpu_idx) if gpu_idx is not None else None)

    def to_json(self) -> dict[str, Any]:
        """The body ``from_json`` accepts back: what the desired state file stores (issue 4)."""
        body: dict[str, Any] = {
            "model_name": self.model_name, "model_engine": self.model_engine, "replica": self.replica,
            "model_uid": self.model_uid, "env": dict(self.env), "options": dict(self.options),
            "enable_virtual_env": self.enable_virtual_env,
            "virtual_env_packages": list(self.virtual_env_packages), "n_gpu": self.n_gpu,
        }
        if self.gpu_idx is not None:
            body["gpu_idx"] = list(self.gpu_idx)
        if self.python is not None:
            body["python"] = self.python
        return body


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaEnvironment:
    """The interpreter (and extra variables) a model's replicas run with: a model venv or the daemon's."""

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

    def __init__(self, *, uid: str, spec: ModelSpec, engine: str, request: LaunchRequest,
                 router: Router[Replica] | None = None) -> None:
        self.uid = uid
        self.spec = spec
        self.engine = engine
        self.request = request
        self.replicas: list[Replica] = []
        self.router: Router[Replica] = router or Router()
        # GPU placement of each replica index, reserved in the slot table before anything is spawned.
        self.placements: dict[int, Placement] = {}
        self.created = time.time()
        self.events: list[dict[str, Any]] = []
        self.launch_task: asyncio.Task[None] | None = None
        self.terminating = False
        self.launch_error: str | None = None
        self.environment = ReplicaEnvironment(python=sys.executable)
        self._changed = asyncio.Condition()
        self.scale_lock = asyncio.Lock()

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
                await self._changed.wait_for(lambda: len(self.events) > sent)  # noqa: B023  # awaited here
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
            "n_gpu": self.request.n_gpu,
            "gpu_idx": list(self.request.gpu_idx) if self.request.gpu_idx is not None else None,
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
        slots: SlotTable | None = None,
        health: HealthPolicy | None = None,
        desired: DesiredState | None = None,
        max_concurrency: int = 0,
        max_queue: int = 0,
    ) -> None:
        # Issue 4: placement on the GPUs, health probes of READY replicas, the state restored at start, and
        # the router's admission limits (per-replica cap, per-model queue).
        self.slots = slots or SlotTable(platform.gpus)
        self._health = health
        self._desired = desired
        self._max_concurrency = max_concurrency
        self._max_queue = max_queue
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
                    f"model {spec.name!r} does not support engine {wanted!r} "
                    f"(supported: {', '.join(spec.engines)})"
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
            raise UnknownModelError(f"unknown model {request.model_name!r} (known: {known})",
                                    param="model_name")
        uid = request.model_uid or request.model_name
        if uid in self.models:
            raise ModelExistsError(f"model uid {uid!r} is already launched; terminate it or pick another uid")
        engine = self.choose_engine(spec, request.model_engine)
        router: Router[Replica] = Router(max_concurrency=self._max_concurrency, max_queue=self._max_queue)
        model = RunningModel(uid=uid, spec=spec, engine=engine, request=request, router=router)
        # Place every replica now: an impossible request is refused, with the reason, before any spawn.
        placements = self.slots.plan(range(request.replica), n_gpu=request.n_gpu, gpu_idx=request.gpu_idx)
        # Ask the engine for replica 0's launch spec now, so a bad option is a 400 before anything starts.
        self.plugins.launch_spec(engine, spec, self._replica_context(model, placements[0], port=0))
        for placement in placements:
            self._reserve(model, placement)
        self.models[uid] = model
        self._persist()
        model.launch_task = asyncio.create_task(self._launch(model), name=f"launch {uid}")
        return model

    def _reserve(self, model: RunningModel, placement: Placement) -> None:
        model.placements[placement.replica_index] = placement
        self.slots.reserve(f"{model.uid}-r{placement.replica_index}", placement)

    def _release(self, model: RunningModel, index: int) -> None:
        """Free a replica's GPUs; only after its whole group is gone (``Replica.stop`` waits for that)."""
        model.placements.pop(index, None)
        self.slots.release(f"{model.uid}-r{index}")

    async def _launch(self, model: RunningModel) -> None:
        started = time.monotonic()
        await model.publish(
            {"event": "launching",
             "message": f"launching {model.uid} ({model.spec.name}, engine {model.engine}, "
             f"{model.request.replica} replica(s))"}
        )
        try:
            model.environment = await self._environments.prepare(model, model.publish)
            model.replicas = [self._make_replica(model, p) for p in model.placements.values()]
            await asyncio.gather(*(self._start_replica(model, r) for r in model.replicas))
        except Exception as exc:
            model.launch_error = str(exc)
            await self._stop_replicas(model)
            self.models.pop(model.uid, None)
            self._persist()
            log.error("launch of %s failed: %s", model.uid, exc)
            await model.publish({"event": "error", "code": getattr(exc, "code", "launch_failed"),
                                 "message": str(exc)})
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

    def _replica_context(self, model: RunningModel, placement: Placement, *, port: int) -> ReplicaContext:
        index = placement.replica_index
        return ReplicaContext(
            model_uid=model.uid,
            model_name=model.spec.name,
            engine=model.engine,
            replica_index=index,
            socket_path=str(self.run_dir / f"{model.uid}-r{index}.sock"),
            python=model.environment.python,
            gpu_indices=placement.gpu_indices,
            options=dict(model.request.options),
            env=dict(model.request.env),
            log_dir=str(self.log_dir),
            port=port,
        )

    def _make_replica(self, model: RunningModel, placement: Placement) -> Replica:
        index = placement.replica_index
        label = f"{model.uid}-r{index}"
        port = free_loopback_port()
        context = self._replica_context(model, placement, port=port)

        def make_spec() -> Any:
            spec = self.plugins.launch_spec(model.engine, model.spec, context)
            if spec.readiness.timeout_s > self._launch_timeout:
                spec = replace(spec, readiness=replace(spec.readiness, timeout_s=self._launch_timeout))
            return spec

        # The replica sees its slots only; with none, every GPU is hidden so a CPU engine cannot grab one.
        env = {**self._base_env, **model.environment.env, **model.request.env,
               "CUDA_VISIBLE_DEVICES": cuda_visible_devices(placement.gpu_indices)}
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
            gpu_indices=placement.gpu_indices,
            health=self._health,
            pid_file=pid_dir(self.home) / f"{label}.pid",
            listener=lambda replica, old, new, why: model.router.notify(),
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
        if not self._closing:  # a daemon shutdown keeps the desired state, so a restart brings the model back
            self._persist()
        log.info("model %s terminated", uid)
        return model.snapshot()

    async def _stop_replicas(self, model: RunningModel) -> None:
        await asyncio.gather(*(r.stop() for r in model.replicas), return_exceptions=True)
        for index in list(model.placements):
            self._release(model, index)
        self._environments.release(model)

    async def scale(self, uid: str, replicas: int) -> dict[str, Any]:
        """Add or remove replicas of a running model live; returns the model's snapshot (issue 4).

        New replicas are placed (or refused) before anything spawns and are routable as soon as each is
        READY. Removed replicas (the highest indices) leave the router first, then stop; their GPUs are freed
        once their groups are gone. The desired state records the new count.
        """
        model = self.get(uid)
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= MAX_REPLICAS:
            raise InvalidRequestError(f"replicas must be an integer 1..{MAX_REPLICAS} (use terminate for 0), "
                                      f"got {replicas!r}", param="replicas")
        if model.terminating or (model.launch_task is not None and not model.launch_task.done()):
            raise InvalidRequestError(f"model {uid!r} is {model.state.lower()}; scale it once it is launched")
        async with model.scale_lock:
            current = len(model.replicas)
            if replicas > current:
                await self._scale_up(model, replicas - current)
            elif replicas < current:
                doomed = sorted(model.replicas, key=lambda r: r.index)[replicas:]
                model.replicas = [r for r in model.replicas if r not in doomed]
                model.request = replace(model.request, replica=len(model.replicas))
                self._persist()
                await asyncio.gather(*(r.stop() for r in doomed), return_exceptions=True)
                for r in doomed:
                    self._release(model, r.index)
                log.info("model %s scaled down %d -> %d replicas", uid, current, replicas)
        return model.snapshot()

    async def _scale_up(self, model: RunningModel, count: int) -> None:
        first = max((r.index for r in model.replicas), default=-1) + 1
        placements = self.slots.plan(range(first, first + count), n_gpu=model.request.n_gpu,
                                     gpu_idx=model.request.gpu_idx)
        new = []
        for placement in placements:
            self._reserve(model, placement)
            new.append(self._make_replica(model, placement))
        results = await asyncio.gather(*(r.start() for r in new), return_exceptions=True)
        failed = [(r, res) for r, res in zip(new, results, strict=True) if isinstance(res, BaseException)]
        started = [r for r in new if r.state is ReplicaState.READY]
        model.replicas.extend(started)
        for replica, _ in failed:
            await replica.stop()
            self._release(model, replica.index)
        model.request = replace(model.request, replica=len(model.replicas))
        self._persist()
        if failed:
            raise LaunchError(f"scale of {model.uid}: {len(failed)} of {count} new replica(s) failed to "
                              f"start: {failed[0][1]}")
        log.info("model %s scaled up to %d replicas", model.uid, len(model.replicas))

    def _persist(self) -> None:
        """Write the desired state: each registered model's launch request with its uid and replica count."""
        if self._desired is None:
            return
        entries = [{**m.request.to_json(), "model_uid": m.uid} for m in self.models.values()]
        try:
            self._desired.save(entries)
        except OSError as exc:  # a full disk must not take serving down; the next write may succeed
            log.error("cannot write desired state %s: %s", self._desired.path, exc)

    def restore(self) -> list[RunningModel]:
        """Launch the models of the desired state (daemon start); one that cannot be launched is logged."""
        if self._desired is None:
            return []
        started = []
        for body in self._desired.load():
            try:
                started.append(self.start_launch(LaunchRequest.from_json(body)))
                log.info("restoring model %s (%s, %s replica(s))", body.get("model_uid"),
                         body.get("model_name"), body.get("replica", 1))
            except XinfdError as exc:
                log.error("cannot restore model %s: %s", body.get("model_uid"), exc)
        self._persist()  # drop what could not be restored, so the file says what is really wanted now
        return started

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


def supervision_options(settings: Settings, platform: Platform) -> dict[str, Any]:
    """``ModelManager`` arguments from the settings (issue 4): slots, health probes, state file, router."""
    return {
        "slots": SlotTable(
            platform.gpus,
            strategy=settings.launch_strategy,
            allow_multi_replica_per_gpu=settings.allow_multi_replica_per_gpu,
            free_mb=nvml_free_memory if platform.nvml_available else None,
        ),
        "health": HealthPolicy(
            interval=settings.health_check_interval,
            timeout=settings.health_check_timeout,
            failure_threshold=settings.health_check_failure_threshold,
            enabled=not settings.disable_health_check,
        ),
        "restart": RestartPolicy(initial_delay=settings.restart_backoff, budget=settings.restart_budget),
        "desired": DesiredState(settings.home),
        "max_concurrency": settings.replica_max_concurrency,
        "max_queue": settings.model_queue_size,
    }


def free_loopback_port() -> int:
    """A loopback TCP port that is free now (for engines that cannot serve on a Unix socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _runtime_dir(home: Path) -> Path:
    """Where replica sockets live: under the home, unless that is too long for a Unix socket (108 bytes)."""
    candidate = home / "run"
    if len(str(candidate)) + 80 > 104:
        digest = hashlib.sha256(str(home).encode()).hexdigest()[:12]
        candidate = Path(tempfile.gettempdir()) / f"xinfd-{os.getuid()}-{digest}"
    candidate.mkdir(parents=True, exist_ok=True, mode=0o700)
    return candidate
