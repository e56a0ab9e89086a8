"""The mlx engine (mlx-lm): native on Apple silicon; on Linux it runs on the CPU with the ``mlx-lm[cpu]``
extra (the plain ``mlx`` wheel for Linux has no backend, so ``import mlx.core`` fails without ``mlx-cpu``).

Served by xinfd's worker host with mlx-lm's own continuous batching (``mlx_model``). Weights: a Hugging Face
or mlx-community folder (``model_path`` option or the spec's ``extra``, as for the transformers engine).
Imported by the daemon: standard library and xinfd types only.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from xinfd.hookspecs import hookimpl
from xinfd.types import (
    Availability,
    EmbeddingModel,
    EngineInfo,
    LaunchSpec,
    ModelSpec,
    Platform,
    RegisterEngine,
    ReplicaContext,
    TextModel,
)
from xinfd.worker.launch import worker_launch_spec
from xinfd_engines._common import reject_unknown_options
from xinfd_engines.transformers import check_local_availability, weights_location

NAME = "mlx"
REQUIREMENTS = ['mlx-lm>=0.28 ; sys_platform == "darwin"', 'mlx-lm[cpu]>=0.28 ; sys_platform == "linux"']
KNOWN_OPTIONS = frozenset({"model_path", "enable_thinking"})


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def platform_reason(platform: Platform) -> str | None:
    """Why mlx cannot run on this host at all, or ``None``."""
    if platform.system == "Darwin":
        return None if platform.machine == "arm64" else "mlx needs Apple silicon (arm64); this Mac is Intel"
    if platform.system == "Linux":
        return None
    return (
        f"mlx runs on macOS (Apple silicon) or Linux; this host runs {platform.system or 'an unknown system'}"
    )


def _enable_thinking(options: Any) -> bool | None:
    value = options.get("enable_thinking")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise ValueError(f"launch option 'enable_thinking' must be true or false, got {value!r}")


@hookimpl
def xinfd_register_engines(register: RegisterEngine) -> None:
    register(
        EngineInfo(
            name=NAME,
            abilities=("chat", "generate"),
            description="mlx-lm with continuous batching (Apple silicon; Linux CPU with mlx-lm[cpu])",
            probe_module="mlx_lm",
        )
    )


@hookimpl
def xinfd_engine_dependencies(engine: str) -> list[str] | None:
    return list(REQUIREMENTS) if engine == NAME else None


@hookimpl
def xinfd_engine_availability(engine: str, model: ModelSpec, platform: Platform) -> Availability | None:
    if engine != NAME:
        return None
    reason = platform_reason(platform)
    if reason is not None:
        return Availability(available=False, reason=reason)
    missing_backend = platform.system == "Linux" and not _installed("mlx-cpu")
    # Plain mlx-lm on Linux installs, but `import mlx.core` fails without the cpu extra's backend.
    if not platform.venv_enabled and missing_backend and _installed("mlx-lm"):
        return Availability(
            available=False,
            reason="mlx-lm is installed without its CPU backend on Linux: pip install 'mlx-lm[cpu]'",
        )
    return check_local_availability(NAME, ("mlx_lm",), model, platform)


@hookimpl
def xinfd_engine_launch(engine: str, model: ModelSpec, replica: ReplicaContext) -> LaunchSpec | None:
    if engine != NAME:
        return None
    reject_unknown_options(NAME, replica.options, KNOWN_OPTIONS)
    _enable_thinking(replica.options)
    weights_location(model, replica.options)
    return worker_launch_spec(replica, model)


@hookimpl
def xinfd_engine_load(
    engine: str, model: ModelSpec, replica: ReplicaContext
) -> TextModel | EmbeddingModel | None:
    if engine != NAME:
        return None
    from xinfd_engines.mlx_model import MlxTextModel, batch_size

    return MlxTextModel(
        weights_location(model, replica.options),
        batch_size=batch_size(),
        enable_thinking=_enable_thinking(replica.options),
    )
