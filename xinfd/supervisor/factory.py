"""Replica construction: from a model and a placement, the blueprint of its replica, then the replica itself.

``ReplicaBlueprints`` decides everything a replica is made of (identity and files, the engine's launch spec
with the daemon's start deadline, the replica context, the environment with ``CUDA_VISIBLE_DEVICES`` from the
placement). A ``ReplicaFactory`` turns a blueprint into a supervised ``Replica``; the manager is given one, so
tests inject a factory of scripted replicas instead of patching a module global.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from xinfd.cpus import thread_env
from xinfd.gpus import Placement, cuda_visible_devices
from xinfd.plugins import Plugins
from xinfd.processes import Spawner
from xinfd.replicas import HealthPolicy, Listener, Replica, RestartPolicy
from xinfd.supervisor.identity import ReplicaIdentity, RuntimeLayout
from xinfd.supervisor.running import RunningModel
from xinfd.types import LaunchSpec, ReplicaContext, ReplicaSettings


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaBlueprint:
    """Everything one replica is made of, before it exists."""

    identity: ReplicaIdentity
    port: int
    gpu_indices: tuple[int, ...]
    env: Mapping[str, str]
    make_spec: Callable[[], LaunchSpec]
    listener: Listener | None = None

    def replica_args(self) -> dict[str, Any]:
        """The ``Replica`` constructor arguments the blueprint decides (a factory adds the supervision policy)."""
        return {
            "model_uid": self.identity.model_uid,
            "index": self.identity.index,
            "socket_path": self.identity.socket_path,
            "log_path": self.identity.log_path,
            "pid_file": self.identity.pid_file,
            "port": self.port,
            "gpu_indices": self.gpu_indices,
            "env": self.env,
            "make_spec": self.make_spec,
            "listener": self.listener,
        }


class ReplicaFactory(Protocol):
    """Builds the replica of a blueprint (not started)."""

    def __call__(self, blueprint: ReplicaBlueprint) -> Replica: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisedReplicaFactory:
    """Real replicas: spawned by ``spawner``, restarted and health-checked by the given policies."""

    spawner: Spawner
    stop_grace: float
    restart: RestartPolicy | None = None
    health: HealthPolicy | None = None

    def __call__(self, blueprint: ReplicaBlueprint) -> Replica:
        return Replica(
            **blueprint.replica_args(),
            spawner=self.spawner,
            stop_grace=self.stop_grace,
            restart=self.restart,
            health=self.health,
        )


class ReplicaBlueprints:
    """Derives replica contexts and blueprints for the models of one daemon."""

    def __init__(
        self,
        *,
        plugins: Plugins,
        layout: RuntimeLayout,
        base_env: Mapping[str, str],
        launch_timeout: float,
        replica_settings: Callable[[], ReplicaSettings],
    ) -> None:
        self._plugins = plugins
        self._layout = layout
        self._base_env = dict(base_env)
        self._launch_timeout = launch_timeout
        # Asked at each replica start, so a replica (re)started after a SIGHUP gets the reloaded values.
        self._replica_settings = replica_settings

    def context(self, model: RunningModel, placement: Placement, *, port: int) -> ReplicaContext:
        identity = self._layout.replica(model.uid, placement.replica_index)
        return ReplicaContext(
            model_uid=model.uid,
            model_name=model.spec.name,
            engine=model.engine,
            replica_index=identity.index,
            socket_path=str(identity.socket_path),
            python=model.environment.python,
            gpu_indices=placement.gpu_indices,
            # The downloaded folder is not written into the request: the desired state keeps what the user
            # asked for, so a restart re-checks the cache instead of trusting a path that may be gone.
            options=({"model_path": model.weights_path} if model.weights_path else {}) | dict(model.request.options),
            env=dict(model.request.env),
            log_dir=str(self._layout.log_dir),
            port=port,
            cache_dir=str(self._layout.cache_dir),
            settings=self._replica_settings(),
            cpu_threads=placement.cpu.threads if placement.cpu else 0,
            cpu_affinity=placement.cpu.cores if placement.cpu else (),
        )

    def check(self, model: RunningModel, placement: Placement) -> None:
        """Ask the engine for a launch spec now, so a bad launch option is a 400 before anything starts."""
        self._plugins.launch_spec(model.engine, model.spec, self.context(model, placement, port=0))

    def blueprint(self, model: RunningModel, placement: Placement) -> ReplicaBlueprint:
        port = free_loopback_port()
        context = self.context(model, placement, port=port)
        plugins, timeout = self._plugins, self._launch_timeout

        def make_spec() -> LaunchSpec:
            spec = plugins.launch_spec(model.engine, model.spec, context)
            if spec.readiness.timeout_s > timeout:
                spec = replace(spec, readiness=replace(spec.readiness, timeout_s=timeout))
            return spec

        # The replica sees its slots only; with none, every GPU is hidden so a CPU engine cannot grab one.
        # A CPU replica's thread variables follow its share of the cores (the daemon's own OMP_NUM_THREADS is
        # not a per-replica choice), except those the launch's --env sets.
        env = {
            **self._base_env,
            **model.environment.env,
            **(thread_env(placement.cpu, model.request.env) if placement.cpu else {}),
            **model.request.env,
            "CUDA_VISIBLE_DEVICES": cuda_visible_devices(placement.gpu_indices),
        }
        return ReplicaBlueprint(
            identity=self._layout.replica(model.uid, placement.replica_index),
            port=port,
            gpu_indices=placement.gpu_indices,
            env=env,
            make_spec=make_spec,
            listener=lambda replica, old, new, why: model.router.notify(),
        )


def free_loopback_port() -> int:
    """A loopback TCP port that is free now (for engines that cannot serve on a Unix socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
