"""How the daemon starts xinfd's own worker host for an engine (daemon side; standard library only).

A core module, not part of the ``worker`` package: the plugin contract (``xinfd.hookspecs.WorkerEngine``) and
the daemon use it, and the core must not import the replica's package. ``xinfd.worker.launch`` re-exports it for
the worker, which decodes what this encodes.

Engines hosted by the worker return ``worker_launch_spec(replica, model)`` from ``Engine.launch`` (the base
class ``xinfd.hookspecs.WorkerEngine`` does). The
replica context and the model spec travel to the worker as JSON in one environment variable, so the worker
needs no access to the daemon's registry (user-registered models included).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from xinfd.types import LaunchSpec, ModelSpec, ReadinessProbe, ReplicaContext, ReplicaSettings

CONTEXT_ENV = "XINFD_WORKER_CONTEXT"


def worker_launch_spec(
    replica: ReplicaContext, model: ModelSpec, *, readiness_timeout_s: float = 600.0,
    preload: tuple[str, ...] = (),
) -> LaunchSpec:
    """The launch spec that runs ``python -m xinfd.worker`` with the model venv's interpreter.

    ``preload`` (the engine's heavy imports) is kept for replicas on the CPU only: a fork server never touches
    CUDA, and a process forked after CUDA started could not use it.
    """
    return LaunchSpec(
        argv=(replica.python, "-m", "xinfd.worker"),
        env={CONTEXT_ENV: encode_context(replica, model)},
        readiness=ReadinessProbe(path="/health", timeout_s=readiness_timeout_s),
        api_prefix="/v1",
        preload=() if replica.gpu_indices else tuple(preload),
    )


def encode_context(replica: ReplicaContext, model: ModelSpec) -> str:
    """Serialise what the worker needs into one JSON string."""
    return json.dumps({"replica": _as_json(replica), "model": _as_json(model)}, sort_keys=True)


def decode_context(raw: str) -> tuple[ReplicaContext, ModelSpec]:
    """Inverse of ``encode_context``; tuples come back as tuples."""
    data = json.loads(raw)
    r = dict(data["replica"])
    r["gpu_indices"] = tuple(r.get("gpu_indices", ()))
    r["cpu_affinity"] = tuple(r.get("cpu_affinity", ()))
    r["settings"] = ReplicaSettings(**r.get("settings", {}))
    m = dict(data["model"])
    m["abilities"] = tuple(m.get("abilities", ()))
    m["engines"] = tuple(m.get("engines", ()))
    return ReplicaContext(**r), ModelSpec(**m)


def _as_json(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = _as_json(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out
