"""The model supervisor: launches models as supervised replicas, scales and stops them, keeps the desired state.

Modules, one job each: ``manager`` (the public ``ModelManager``), ``plan`` (engine choice and placements,
pure), ``factory`` (replica blueprints and the injectable ``ReplicaFactory``), ``running`` (a launched model's
state), ``identity`` (a replica's label and file paths), ``launch_request`` (the validated request),
``desired_state`` (``state.json``). Launch events are ``xinfd.events``, shared with the venv layer.
"""

from __future__ import annotations

from xinfd.supervisor.factory import ReplicaBlueprint, ReplicaFactory, SupervisedReplicaFactory
from xinfd.supervisor.launch_request import LaunchPolicy, LaunchRequest
from xinfd.supervisor.manager import ModelManager, replica_settings, supervision_options
from xinfd.supervisor.running import RunningModel
from xinfd.supervisor.runtime_dir import RuntimeDir, UnsafeRuntimeDirError

__all__ = [
    "LaunchPolicy",
    "LaunchRequest",
    "ModelManager",
    "ReplicaBlueprint",
    "ReplicaFactory",
    "RunningModel",
    "RuntimeDir",
    "SupervisedReplicaFactory",
    "UnsafeRuntimeDirError",
    "replica_settings",
    "supervision_options",
]
