"""ModelManager: launch, list, scale and terminate models, each served by N supervised replicas, and keep the
desired state (which models should run) on disk so a daemon restart brings them back.

A launch runs as a task owned by the manager, not by the client that asked for it: a dropped ``xinfctl`` does
not abort a launch half-way, and ``terminate`` can cancel a launch still in progress. Progress is published as
typed events (``xinfd.events``) that the control API streams as NDJSON. The decisions live beside it: the
launch plan (``plan``), replica construction (``factory``), identities and paths (``identity``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xinfd.downloads import Downloader, DownloadSettings
from xinfd.environments import EnvironmentProvider, SystemEnvironment
from xinfd.errors import InvalidRequestError, LaunchError, ShuttingDownError, UnknownModelError, XinfdError
from xinfd.events import Failed, Launching, Ready, ReplicaReady, ReplicaStarting
from xinfd.gpus import Placement, SlotTable, nvml_free_memory
from xinfd.plugins import Plugins
from xinfd.processes import Spawner
from xinfd.replicas import HealthPolicy, Replica, ReplicaState, RestartPolicy
from xinfd.router import Router
from xinfd.supervisor import plan
from xinfd.supervisor.desired_state import DesiredState
from xinfd.supervisor.factory import ReplicaBlueprints, ReplicaFactory, SupervisedReplicaFactory
from xinfd.supervisor.identity import RuntimeLayout
from xinfd.supervisor.launch_request import MAX_REPLICAS, STRICT, LaunchPolicy, LaunchRequest
from xinfd.supervisor.running import RunningModel
from xinfd.types import ModelSpec, Platform, ReplicaSettings

if TYPE_CHECKING:
    from xinfd.config import Settings

log = logging.getLogger(__name__)


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
        replica_factory: ReplicaFactory | None = None,
        run_dir: Path | None = None,
    ) -> None:
        # The slot table is the one owner of placements; the router's admission limits are a per-replica cap
        # and a per-model queue; ``desired`` is the state file restored at start (None: not persisted).
        self.slots = slots or SlotTable(platform.gpus)
        self._desired = desired
        self._max_concurrency = max_concurrency
        self._max_queue = max_queue
        self._downloader = downloader
        self._environments: EnvironmentProvider = environments or SystemEnvironment()
        self.plugins = plugins
        self.platform = platform
        self.home = home
        # run_dir: the daemon's private socket directory (``RuntimeDir``); None prepares one for ``home``.
        self.layout = RuntimeLayout.for_home(home, run_dir)
        self._blueprints = ReplicaBlueprints(
            plugins=plugins,
            layout=self.layout,
            base_env=os.environ if base_env is None else base_env,
            launch_timeout=launch_timeout,
            replica_settings=replica_settings,
        )
        self._factory: ReplicaFactory = replica_factory or SupervisedReplicaFactory(
            spawner=spawner, stop_grace=stop_grace, restart=restart, health=health
        )
        self.models: dict[str, RunningModel] = {}
        self._closing = False

    @property
    def run_dir(self) -> Path:
        return self.layout.run_dir

    @property
    def log_dir(self) -> Path:
        return self.layout.log_dir

    def set_limits(self, *, max_concurrency: int, max_queue: int) -> None:
        """New admission limits for every model, running ones included (SIGHUP); waiters re-check at once."""
        self._max_concurrency, self._max_queue = max_concurrency, max_queue
        for model in self.models.values():
            model.router.max_concurrency, model.router.max_queue = max_concurrency, max_queue
            model.router.notify()

    def capacity(self) -> int | None:
        """Requests all models can hold at once (in replicas and queues); None when unbounded or no model runs."""
        if not self._max_concurrency or not self.models:
            return None
        return sum(len(m.replicas) * self._max_concurrency + self._max_queue for m in self.models.values())

    def families(self) -> dict[str, ModelSpec]:
        return dict(self.plugins.models)

    def get(self, uid: str) -> RunningModel:
        try:
            return self.models[uid]
        except KeyError:
            # The other uids are not listed: an unknown name must not enumerate what runs (GET /v1/models does,
            # behind the same access check as every model).
            raise UnknownModelError(f"model {uid!r} is not running") from None

    def choose_engine(self, spec: ModelSpec, wanted: str | None, *, venv: bool | None = None) -> str:
        """The requested engine if it can serve the model here, else the best available one (``plan``);
        ``venv`` is the launch's own venv choice (``--enable-virtual-env``), None for the daemon's."""
        platform = self.platform if venv is None else replace(self.platform, venv_enabled=venv)
        return plan.choose_engine(self.plugins, platform, spec, wanted)

    # -- launch ------------------------------------------------------------------------------------------------

    def start_launch(self, request: LaunchRequest) -> RunningModel:
        """Validate, register the model and start its launch task; returns at once."""
        if self._closing:
            raise ShuttingDownError("xinfd is shutting down")
        launch = plan.plan_launch(
            request,
            models=self.plugins.models,
            running=self.models,
            choose_engine=lambda spec, wanted: self.choose_engine(spec, wanted, venv=request.enable_virtual_env),
            slots=self.slots,
        )
        router: Router[Replica] = Router(max_concurrency=self._max_concurrency, max_queue=self._max_queue)
        model = RunningModel(uid=launch.uid, spec=launch.spec, engine=launch.engine, request=request, router=router)
        self._blueprints.check(model, launch.placements[0])
        self.slots.reserve_all(model.uid, launch.placements, cpu_threads=request.thread_count)
        self.models[model.uid] = model
        self._persist()
        model.launch_task = asyncio.create_task(self._launch(model), name=f"launch {model.uid}")
        return model

    def _make_replica(self, model: RunningModel, placement: Placement) -> Replica:
        return self._factory(self._blueprints.blueprint(model, placement))

    async def _launch(self, model: RunningModel) -> None:
        started = time.monotonic()
        await model.publish(Launching(message=f"launching {model.uid} ({model.spec.name}, engine {model.engine}, "
                                      f"{model.request.replica} replica(s))"))
        try:
            # Download before the venv build: an unknown repo then fails in seconds, not after minutes.
            if self._downloader is not None:
                model.weights_path = await self._downloader.weights_for(
                    self.plugins.engine(model.engine), model.spec, model.request.options, model.publish
                )
            model.environment = await self._environments.prepare(model.environment_request(), model.publish)
            model.replicas = [self._make_replica(model, p) for p in self.slots.placements(model.uid)]
            await asyncio.gather(*(self._start_replica(model, r) for r in model.replicas))
        except Exception as exc:
            model.launch_error = str(exc)
            await self._stop_replicas(model)
            self.models.pop(model.uid, None)
            self._persist()
            log.error("launch of %s failed: %s", model.uid, exc)
            await model.publish(Failed(code=getattr(exc, "code", "launch_failed"), message=str(exc),
                                       status=getattr(exc, "status", 500)))
            return
        except asyncio.CancelledError:
            model.launch_error = "launch cancelled"
            await self._stop_replicas(model)
            await model.publish(Failed(code="launch_cancelled", message="launch cancelled"))
            raise
        await model.publish(Ready(message=f"{model.uid} ready in {time.monotonic() - started:.2f}s",
                                  model=model.snapshot()))

    async def _start_replica(self, model: RunningModel, replica: Replica) -> None:
        await model.publish(ReplicaStarting(replica=replica.index, message=f"starting replica {replica.label}"))
        await replica.start()
        await model.publish(ReplicaReady(replica=replica.index, pid=replica.pid,
                                         message=f"replica {replica.label} ready (pid {replica.pid})"))

    # -- terminate and scale -----------------------------------------------------------------------------------

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
            if not model.unplaced:
                self.retry_unplaced()  # its slots are free: a restored model waiting for them may fit now
        log.info("model %s terminated", uid)
        return model.snapshot()

    async def _stop_replicas(self, model: RunningModel) -> None:
        """Stop the replicas, then free their GPUs (``Replica.stop`` returns once each group is gone)."""
        await asyncio.gather(*(r.stop() for r in model.replicas), return_exceptions=True)
        for placement in self.slots.placements(model.uid):
            self.slots.release(model.uid, placement.replica_index)
        self._environments.release(model.uid)

    async def scale(self, uid: str, replicas: int) -> dict[str, Any]:
        """Add or remove replicas of a running model live; returns the model's snapshot.

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
        if model.unplaced:
            raise InvalidRequestError(f"model {uid!r} is FAILED ({model.launch_error}); terminate it first")
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
                    self.slots.release(model.uid, r.index)
                log.info("model %s scaled down %d -> %d replicas", uid, current, replicas)
        return model.snapshot()

    async def _scale_up(self, model: RunningModel, count: int) -> None:
        first = max((r.index for r in model.replicas), default=-1) + 1
        placements = self.slots.reserve_all(
            model.uid, plan.plan_scale_up(model.request, first, count, self.slots),
            cpu_threads=model.request.thread_count,
        )
        new = [self._make_replica(model, placement) for placement in placements]
        results = await asyncio.gather(*(r.start() for r in new), return_exceptions=True)
        failed = [(r, res) for r, res in zip(new, results, strict=True) if isinstance(res, BaseException)]
        model.replicas.extend(r for r in new if r.state is ReplicaState.READY)
        for replica, _ in failed:
            await replica.stop()
            self.slots.release(model.uid, replica.index)
        model.request = replace(model.request, replica=len(model.replicas))
        self._persist()
        if failed:
            raise LaunchError(
                f"scale of {model.uid}: {len(failed)} of {count} new replica(s) failed to start: {failed[0][1]}"
            )
        log.info("model %s scaled up to %d replicas", model.uid, len(model.replicas))

    # -- desired state -----------------------------------------------------------------------------------------

    def _persist(self) -> None:
        """Write the desired state: each registered model's launch request with its uid and replica count."""
        if self._desired is None:
            return
        entries = [{**m.request.to_json(), "model_uid": m.uid} for m in self.models.values()]
        try:
            self._desired.save(entries)
        except OSError as exc:  # a full disk must not take serving down; the next write may succeed
            log.error("cannot write desired state %s: %s", self._desired.path, exc)

    def restore(self, policy: LaunchPolicy = STRICT) -> list[RunningModel]:
        """Launch the models of the desired state (daemon start).

        An entry that is not a valid launch request (under ``policy``, the operator's current opt-ins) is
        logged and dropped. A valid one that cannot be launched now (its GPU is gone, its engine or family is
        not available) stays in the desired state, listed FAILED with the reason, and is launched again when
        slots are freed (``retry_unplaced``) or at the next start, when the GPU may be back.
        """
        if self._desired is None:
            return []
        started = []
        for body in self._desired.load():
            try:
                request = LaunchRequest.from_json(body, policy)
            except XinfdError as exc:
                log.error("cannot restore model %s: %s; dropped from the desired state", body.get("model_uid"), exc)
                continue
            try:
                started.append(self.start_launch(request))
                log.info("restoring model %s (%s, %s replica(s))", request.model_uid, request.model_name,
                         request.replica)
            except XinfdError as exc:
                self._keep_unplaced(request, exc)
        self._persist()  # drop what is not a launch request, so the file says what is really wanted now
        return started

    def _keep_unplaced(self, request: LaunchRequest, exc: XinfdError) -> None:
        uid = request.model_uid or request.model_name
        log.error("cannot restore model %s now: %s; kept in the desired state as FAILED", uid, exc)
        spec = self.plugins.models.get(request.model_name) or ModelSpec(
            name=request.model_name, abilities=(), engines=()
        )
        model = RunningModel(uid=uid, spec=spec, engine=request.model_engine or "", request=request)
        model.launch_error = f"not restored: {exc.message}"
        model.unplaced = True
        self.models[uid] = model

    def retry_unplaced(self) -> list[RunningModel]:
        """Try again to launch restored models that could not be placed (called when slots are freed)."""
        started = []
        for uid, model in list(self.models.items()):
            if not model.unplaced or self._closing:
                continue
            del self.models[uid]
            try:
                started.append(self.start_launch(model.request))
                log.info("model %s restored now that it can be placed", uid)
            except XinfdError as exc:
                self.models[uid] = model
                model.launch_error = f"not restored: {exc.message}"
        return started

    # -- reading and shutdown ----------------------------------------------------------------------------------

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
    """``ModelManager`` arguments from the settings: slots, health probes, restarts, state file, router limits."""
    return {
        "slots": SlotTable(
            platform.gpus,
            strategy=settings.launch_strategy,
            allow_multi_replica_per_gpu=settings.allow_multi_replica_per_gpu,
            free_mb=nvml_free_memory if platform.nvml_available else None,
            cpu_threads_per_replica=settings.cpu_threads_per_replica,
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
        batch_size=settings.batch_size,
        batch_interval=settings.batch_interval,
        text_to_image_batching_size=settings.text_to_image_batching_size,
    )
