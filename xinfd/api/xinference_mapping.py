"""Xinference's REST shapes <-> xinfd's own: the launch body, model types, descriptions and registrations.

Pure functions (no I/O), so every field's mapping is unit-tested. The launch body is what
``xinference_client.RESTfulClient.launch_model`` sends: it always sends every key, most of them null, so null
means "not given". Each field is either mapped to ``LaunchRequest`` or refused with a 400 naming it:

=========================  ==============================================================================
Xinference field           xinfd
=========================  ==============================================================================
model_uid, model_name      the same (``model_name`` required)
model_type                 must be the family's type: ``LLM`` (chat/generate), ``embedding``, ``rerank``
model_engine               the engine, case-insensitive (``vLLM`` -> ``vllm``); null: the best available
model_format, quantization checked against the family's weights (``xinfd.supervisor.variant``)
model_size_in_billions     the same; ``"1_8"`` and ``"0.5"`` strings as Xinference sends fractions
replica                    replica
n_gpu                      ``"auto"`` or an integer; null means CPU only (``n_gpu=0``), as in Xinference
gpu_idx                    an index or a list; with ``replica`` > 1 refused (Xinference splits the list
                           between replicas, xinfd places every replica on all of it)
enable_virtual_env         the same
virtual_env_packages       the same
envs                       ``env``
model_path, enable_thinking and any other key: launch options for the engine (``xinfctl launch --key value``)
n_worker                   1 only (one host)
worker_ip, replica_config  refused unless null (one host; placement is ``gpu_idx``)
peft_model_config          refused unless null (no LoRA adapters)
request_limits             refused unless null (limits are XINFD_REPLICA_MAX_CONCURRENCY / _MODEL_QUEUE_SIZE)
download_hub               null or the daemon's XINFERENCE_MODEL_SRC (one hub per daemon)
virtual_env_find_links     refused unless null or empty (the venv's indexes come from the daemon's pip config)
=========================  ==============================================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from xinfd.errors import InvalidRequestError, UnknownModelError
from xinfd.supervisor import LaunchPolicy, LaunchRequest, RunningModel
from xinfd.supervisor.launch_request import STRICT
from xinfd.supervisor.variant import launched_variant
from xinfd.types import ModelSpec

# Xinference's model types that xinfd serves, with the abilities that make a family one of them.
MODEL_TYPES: dict[str, tuple[str, ...]] = {"LLM": ("chat", "generate", "vision"), "embedding": ("embed",),
                                           "rerank": ("rerank",), "image": ("image",)}
OTHER_TYPES = ("audio", "video", "flexible", "world")

# Keys of the launch body with their own mapping; every other key is an engine option.
_MAPPED = frozenset({
    "model_uid", "model_name", "model_type", "model_engine", "model_format", "model_size_in_billions",
    "quantization", "replica", "n_gpu", "gpu_idx", "enable_virtual_env", "virtual_env_packages", "envs",
    "n_worker", "worker_ip", "replica_config", "peft_model_config", "request_limits", "download_hub",
    "virtual_env_find_links",
})
# Keys refused unless null, each with the reason the message gives.
_ONE_HOST = "xinfd is one daemon per host (run one per host behind a balancer)"
_REFUSED_UNLESS_NULL = {
    "worker_ip": _ONE_HOST,
    "replica_config": f"{_ONE_HOST}; place replicas with gpu_idx",
    "peft_model_config": "LoRA/PEFT adapters are not supported",
    "request_limits": "per-model request limits are the daemon's XINFD_REPLICA_MAX_CONCURRENCY and "
    "XINFD_MODEL_QUEUE_SIZE",
}


def model_type(abilities: Iterable[str]) -> str:
    """Xinference's ``model_type`` of a family: ``embedding``, ``rerank``, ``image`` or ``LLM``."""
    have = set(abilities)
    for name, wanted in MODEL_TYPES.items():
        if name != "LLM" and have.intersection(wanted):
            return name
    return "LLM"


def model_ability(abilities: Iterable[str]) -> list[str]:
    """Xinference's ``model_ability``: the LLM abilities, or ``["embed"]`` / ``["rerank"]``."""
    kind = model_type(abilities)
    return [a for a in abilities if a in MODEL_TYPES[kind]]


def check_model_type(value: Any, spec: ModelSpec | None = None, param: str = "model_type") -> str:
    """A known model type, and the family's own when ``spec`` is given; else a 400 naming the field."""
    if not isinstance(value, str) or value not in MODEL_TYPES:
        if isinstance(value, str) and value in OTHER_TYPES:
            raise InvalidRequestError(
                f"model_type {value!r} is not served by xinfd (it serves {', '.join(MODEL_TYPES)})", param=param
            )
        raise InvalidRequestError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {value!r}",
                                  param=param)
    if spec is not None and model_type(spec.abilities) != value:
        raise InvalidRequestError(
            f"model_type {value!r} does not match {spec.name!r}, which is an {model_type(spec.abilities)} model",
            param=param,
        )
    return value


def launch_request(body: Any, families: Mapping[str, ModelSpec], *, model_src: str,
                   policy: LaunchPolicy = STRICT) -> LaunchRequest:
    """Xinference's launch body as xinfd's ``LaunchRequest``; a field that cannot be honoured is a 400. ``policy``
    is the daemon's (direct references, loader variables): HTTP launches follow the same operator settings as the
    Unix socket's."""
    if not isinstance(body, dict):
        raise InvalidRequestError("launch request must be a JSON object")
    given = {k: v for k, v in body.items() if v is not None}
    name = given.get("model_name")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError("model_name is required", param="model_name")
    spec = families.get(name)
    if spec is None:
        known = ", ".join(sorted(families)) or "none"
        raise UnknownModelError(f"unknown model {name!r} (known: {known})", param="model_name")
    check_model_type(given.get("model_type", "LLM"), spec)
    for key, reason in _REFUSED_UNLESS_NULL.items():
        if key in given:
            raise InvalidRequestError(f"{key} is not supported: {reason}", param=key)
    n_worker = given.get("n_worker", 1)
    if n_worker != 1 or isinstance(n_worker, bool):
        raise InvalidRequestError(f"n_worker must be 1: {_ONE_HOST}", param="n_worker")
    hub = given.get("download_hub")
    if hub is not None and hub != model_src:
        raise InvalidRequestError(
            f"download_hub {hub!r} is not this daemon's model source {model_src!r} (XINFERENCE_MODEL_SRC); "
            "leave it unset", param="download_hub")
    if given.get("virtual_env_find_links"):
        raise InvalidRequestError(
            "virtual_env_find_links is not supported: model venvs use the daemon's pip configuration "
            "(find-links, indexes)", param="virtual_env_find_links")
    out: dict[str, Any] = {"model_name": name}
    for key in ("model_uid", "replica", "enable_virtual_env", "virtual_env_packages", "model_format",
                "model_size_in_billions", "quantization"):
        if key in given:
            out[key] = given[key]
    engine = given.get("model_engine")
    if engine is not None:
        if not isinstance(engine, str) or not engine:
            raise InvalidRequestError(f"model_engine must be a string, got {engine!r}", param="model_engine")
        out["model_engine"] = engine.lower()
    out["n_gpu"] = _n_gpu(body)
    gpu_idx = given.get("gpu_idx")
    if gpu_idx is not None:
        indices = [gpu_idx] if isinstance(gpu_idx, int) and not isinstance(gpu_idx, bool) else gpu_idx
        if given.get("replica", 1) not in (1, None) and isinstance(indices, list) and indices:
            raise InvalidRequestError(
                "gpu_idx with replica > 1 is not supported: Xinference splits gpu_idx between the replicas, "
                "xinfd would place every replica on all of them; launch with n_gpu instead, or one replica",
                param="gpu_idx")
        out["gpu_idx"] = indices
    if "envs" in given:
        out["env"] = given["envs"]
    out["options"] = {k: v for k, v in given.items() if k not in _MAPPED}
    try:
        return LaunchRequest.from_json(out, policy)
    except InvalidRequestError as exc:
        if exc.param == "env":  # name Xinference's field, not ours
            raise InvalidRequestError(str(exc).replace("env must", "envs must"), param="envs") from None
        raise


def _n_gpu(body: Mapping[str, Any]) -> Any:
    """Xinference: ``"auto"`` (the default when absent), an integer, or null for CPU only."""
    if "n_gpu" not in body:
        return "auto"
    value = body["n_gpu"]
    return 0 if value is None else value


def describe(model: RunningModel, *, address: str, model_hub: str, gpus: Iterable[int] = ()) -> dict[str, Any]:
    """A launched model in Xinference's describe shape (``GET /v1/models/{uid}``), plus xinfd's own keys.

    ``model_type`` and ``model_ability`` pick the client's handle (chat, generate, embedding, rerank);
    ``model_format``/``model_size_in_billions``/``quantization`` are the weights the launch loads (what it
    asked for, else the family's own), null where the family does not say.
    """
    spec = model.spec
    kind = model_type(spec.abilities)
    variant = launched_variant(spec, model.request.variant,
                               model_path=model.request.options.get("model_path") is not None)
    body: dict[str, Any] = {
        "model_type": kind,
        "address": address,
        "accelerators": [str(g) for g in sorted(set(gpus))],
        "model_name": spec.name,
        "model_lang": list(spec.extra.get("model_lang", spec.extra.get("language", [])) or []),
        "model_ability": model_ability(spec.abilities),
        "model_description": spec.description,
        "model_engine": model.engine,
        "model_family": spec.name,
        **variant.to_json(),
        "model_hub": model_hub,
        "revision": None,
        "context_length": spec.context_length,
        "replica": model.request.replica,
    }
    if kind == "embedding":
        body["dimensions"] = spec.extra.get("dimensions")
        body["max_tokens"] = spec.context_length
    return body
