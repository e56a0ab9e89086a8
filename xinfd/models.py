"""ModelManager: launch, list and terminate models, each served by N supervised replicas.

A launch runs as a task owned by the manager, not by the client that asked for it: a dropped ``xinfctl`` does
not abort a launch half-way, and ``terminate`` can cancel a launch still in progress. Progress is published as
events (dicts) that the control API streams as NDJSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xinfd.desired_state import DesiredState
from xinfd.downloads import Downloader, DownloadSettings
from xinfd.environments import EnvironmentProvider, ReplicaEnvironment, SystemEnvironment
from xinfd.errors import (
    EngineUnavailableError,
    InvalidRequestError,
    LaunchError,
    ModelExistsError,
    ShuttingDownError,
    UnknownModelError,
    XinfdError,
)
from xinfd.gpus import Placement, SlotTable, cuda_visible_devices, nvml_free_memory
from xinfd.launch_request import MAX_REPLICAS, LaunchRequest
from xinfd.orphans import pid_dir
from xinfd.plugins import Plugins
from xinfd.processes import Spawner
from xinfd.replicas import HealthPolicy, Replica, ReplicaState, RestartPolicy
from xinfd.router import Router
from xinfd.types import ModelSpec, Platform, ReplicaContext, ReplicaSettings

if TYPE_CHECKING:
    from xinfd.config import Settings

log = logging.getLogger(__name__)


__all__ = [
    "EnvironmentProvider",
    "LaunchRequest",
    "ModelManager",
    "ReplicaEnvironment",
    "RunningModel",
    "SystemEnvironment",
]


class RunningModel:
    """A launched model: its replicas, its router, and the launch's event log."""

    def __init__(
        self,
        *,
        uid: str,
        spec: ModelSpec,
        engine: str,
        request: LaunchRequest,
        router: Router[Replica] | None = None,
    ) -> None:
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
        # Folder fetched from the hub at launch (issue 5, model sources), given to replicas as model_path.
        self.weights_path: str | None = None
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
        downloader: Downloader | None = None,
        replica_settings: Callable[[], ReplicaSettings] = ReplicaSettings,
    ) -> None:
        # Issue 4: placement on the GPUs, health probes of READY replicas, the state restored at start, and
        # the router's admission limits (per-replica cap, per-model queue).
        self.slots = slots or SlotTable(platform.gpus)
        self._health = health
        self._desired = desired
        self._max_concurrency = max_concurrency
        self._max_queue = max_queue
        self._downloader = downloader
        # Asked at each replica start, so a replica (re)started after a SIGHUP gets the reloaded values.
        self._replica_settings = replica_settings
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
        available: list[str] = []
        for engine in spec.engines:
            if engine not in self.plugins.engines:
                reasons.append(f"{engine}: not installed")
                continue
            avail = self.plugins.availability(engine, spec, self.platform)
            if avail.available:
                available.append(engine)
            else:
                reasons.append(f"{engine}: {avail.reason}")
        if not available:
            raise EngineUnavailableError(f"no engine can serve {spec.name!r} here ({'; '.join(reasons)})")
        # Issue 5: "llama.cpp, or transformers if llama.cpp is not installed". An engine whose packages are
        # already importable starts now; one that must be installed first (llama-cpp-python compiles for ~8 min)
        # is chosen only when no ready engine can serve the model. Order of the model's list breaks ties.
        ready = [e for e in available if self._installed(e)]
        return (ready or available)[0]

    def _installed(self, engine: str) -> bool:
        """Whether the engine's probe module is importable in the daemon's environment (found, not imported)."""
        module = self.plugins.engines[engine].probe_module
        if module is None:
            return True
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    def start_launch(self, request: LaunchRequest) -> RunningModel:
        """Validate, register the model and start its launch task; returns at once."""
        if self._closing:
            raise ShuttingDownError("xinfd is shutting down")
        spec = self.plugins.models.get(request.model_name)
        if spec is None:
            known = ", ".join(sorted(self.plugins.models)) or "none"
            raise UnknownModelError(
                f"unknown model {request.model_name!r} (known: {known})", param="model_name"
            )
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
            {
                "event": "launching",
                "message": f"launching {model.uid} ({model.spec.name}, engine {model.engine}, "
                f"{model.request.replica} replica(s))",
            }
        )
        try:
            # Download before the venv build: an unknown repo then fails in seconds, not after minutes.
            if self._downloader is not None:
                model.weights_path = await self._downloader.weights_for(
                    self.plugins.engine(model.engine), model.spec, model.request.options, model.publish
                )
            model.environment = await self._environments.prepare(model, model.publish)
            model.replicas = [self._make_replica(model, p) for p in model.placements.values()]
            await asyncio.gather(*(self._start_replica(model, r) for r in model.replicas))
        except Exception as exc:
            model.launch_error = str(exc)
            await self._stop_replicas(model)
            self.models.pop(model.uid, None)
            self._persist()
            log.error("launch of %s failed: %s", model.uid, exc)
            await model.publish(
                {"event": "error", "code": getattr(exc, "code", "launch_failed"), "message": str(exc)}
            )
            return
        except asyncio.CancelledError:
            model.launch_error = "launch cancelled"
            await self._stop_replicas(model)
            await model.publish({"event": "error", "code": "launch_cancelled", "message": "launch cancelled"})
            raise
        await model.publish(
            {
                "event": "ready",
                "message": f"{model.uid} ready in {time.monotonic() - started:.2f}s",
                "model": model.snapshot(),
            }
        )

    async def _start_replica(self, model: RunningModel, replica: Replica) -> None:
        await model.publish(
            {
                "event": "replica_starting",
                "replica": replica.index,
                "message": f"starting replica {replica.label}",
            }
        )
        await replica.start()
        await model.publish(
            {
                "event": "replica_ready",
                "replica": replica.index,
                "pid": replica.pid,
                "message": f"replica {replica.label} ready (pid {replica.pid})",
            }
        )

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
            # The downloaded folder is not written into the request: the desired state keeps what the user
            # asked for, so a restart re-checks the cache instead of trusting a path that may be gone.
            options=({"model_path": model.weights_path} if model.weights_path else {})
            | dict(model.request.options),
            env=dict(model.request.env),
            log_dir=str(self.log_dir),
            port=port,
            cache_dir=str(self.home / "cache" / "converted"),
            settings=self._replica_settings(),
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
        env = {
            **self._base_env,
            **model.environment.env,
            **model.request.env,
            "CUDA_VISIBLE_DEVICES": cuda_visible_devices(placement.gpu_indices),
        }
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
            raise InvalidRequestError(
                f"replicas must be an integer 1..{MAX_REPLICAS} (use terminate for 0), got {replicas!r}",
                param="replicas",
            )
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
        placements = self.slots.plan(
            range(first, first + count), n_gpu=model.request.n_gpu, gpu_idx=model.request.gpu_idx
        )
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
            raise LaunchError(
                f"scale of {model.uid}: {len(failed)} of {count} new replica(s) failed to "
                f"start: {failed[0][1]}"
            )
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
                log.info(
                    "restoring model %s (%s, %s replica(s))",
                    body.get("model_uid"),
                    body.get("model_name"),
                    body.get("replica", 1),
                )
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
        "downloader": Downloader(settings=DownloadSettings.from_settings(settings)),
    }


def replica_settings(settings: Settings) -> ReplicaSettings:
    """The part of the daemon's settings that replicas consume, as their context carries it."""
    return ReplicaSettings(
        max_tokens=settings.max_tokens, batch_size=settings.batch_size, batch_interval=settings.batch_interval
    )


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
