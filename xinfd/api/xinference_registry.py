"""Model registrations and engine parameters in Xinference's shapes (``/v1/model_registrations``,
``/v1/engines``), over xinfd's registry.

Registering takes either xinfd's own family JSON (``name``, ``abilities``, ``engines``...) or Xinference's custom
model JSON (``model_name``, ``model_ability``, ``model_specs``, ...), which is translated field by field:

* ``model_name``, ``model_description``, ``context_length`` (``max_tokens`` for embeddings), ``dimensions``:
  the same; ``model_ability``: ``chat``/``generate`` for an LLM (``embed`` / ``rerank`` from the type);
* ``model_specs``: the family's ``formats`` (format, size, quantizations, the Hugging Face id); the first spec's
  ``model_id`` becomes the weights to download, its ``model_uri`` (a local path) the weights to load;
* the engines follow from the formats: pytorch/safetensors/gptq/awq -> transformers, vllm, sglang (an
  embedding: sentence_transformers), gguf -> llama.cpp, mlx -> mlx — those of them this daemon has;
* ``virtualenv``: the same block; ``model_lang``, ``model_family``, ``version``, ``model_hub``,
  ``model_revision`` are kept as description;
* fields xinfd's engines would not honour are refused naming the field: a non-empty ``chat_template``,
  ``stop_token_ids`` or ``stop`` (the engines use the template and stop tokens shipped with the weights),
  abilities such as ``vision`` or ``tools``, and any other key.
"""

from __future__ import annotations

import json
from collections.abc import Container, Mapping
from typing import Any

from xinfd.api.xinference_mapping import check_model_type, model_ability, model_type
from xinfd.errors import InvalidRequestError
from xinfd.plugins import Plugins
from xinfd.supervisor.variant import display_size, formats
from xinfd.types import ModelSpec, Platform

# Which engines load which weight format, in the order a registration lists them.
FORMAT_ENGINES: dict[str, tuple[str, ...]] = {
    "pytorch": ("transformers", "vllm", "sglang"),
    "safetensors": ("transformers", "vllm", "sglang"),
    "gptq": ("transformers", "vllm", "sglang"),
    "awq": ("transformers", "vllm", "sglang"),
    "fp8": ("vllm", "sglang"),
    "gguf": ("llama.cpp",),
    "ggufv2": ("llama.cpp",),
    "mlx": ("mlx",),
}
EMBEDDING_ENGINES = ("sentence_transformers",)
RERANK_ENGINES = ("sentence_transformers_rerank",)
_DESCRIPTIVE = frozenset({"model_lang", "language", "model_family", "version", "model_hub", "model_revision"})
_NOT_HONOURED = ("chat_template", "stop_token_ids", "stop")
_SPEC_KEYS = frozenset({"model_format", "model_size_in_billions", "quantization", "quantizations", "model_id",
                        "model_uri", "model_hub", "model_revision", "model_file_name_template"})


def spec_json(model_type_name: str, raw: Any, engines: Container[str]) -> dict[str, Any]:
    """The xinfd family JSON for a registration body's ``model`` (a JSON string, or already an object)."""
    check_model_type(model_type_name, param="model_type")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(f"model is not valid JSON: {exc}", param="model") from None
    if not isinstance(raw, dict):
        raise InvalidRequestError("model must be a JSON object (or a string holding one)", param="model")
    if "name" in raw and "engines" in raw:  # xinfd's own format
        if model_type(raw.get("abilities") or ()) != model_type_name:
            raise InvalidRequestError(
                f"model_type {model_type_name!r} does not match the spec's abilities {raw.get('abilities')!r}",
                param="model_type")
        return raw
    return _from_xinference(model_type_name, raw, engines)


def _from_xinference(kind: str, data: Mapping[str, Any], engines: Container[str]) -> dict[str, Any]:
    for key in _NOT_HONOURED:
        if data.get(key):
            raise InvalidRequestError(
                f"{key} is not supported: xinfd's engines use the chat template and stop tokens shipped with the "
                "weights (tokenizer_config.json); remove the field", param=key)
    allowed = {"model_name", "model_description", "context_length", "max_tokens", "dimensions", "model_ability",
               "model_specs", "virtualenv", "model_id", "model_uri", *_DESCRIPTIVE, *_NOT_HONOURED}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidRequestError(f"unsupported field(s) in the model spec: {', '.join(unknown)}",
                                  param=unknown[0])
    name = data.get("model_name")
    if kind == "LLM":
        abilities = data.get("model_ability") or ["chat"]
        if not isinstance(abilities, list) or not abilities or any(a not in ("chat", "generate")
                                                                   for a in abilities):
            raise InvalidRequestError(
                f"model_ability must be chat and/or generate (xinfd serves text LLMs), got {abilities!r}",
                param="model_ability")
    else:
        abilities = ["embed"] if kind == "embedding" else ["rerank"]
    specs = data.get("model_specs")
    if specs is None:
        specs = [{k: data[k] for k in ("model_id", "model_uri") if k in data}]
    if not isinstance(specs, list) or not specs or not all(isinstance(s, dict) for s in specs):
        raise InvalidRequestError("model_specs must be a non-empty list of objects", param="model_specs")
    extra: dict[str, Any] = {k: data[k] for k in _DESCRIPTIVE if k in data}
    entries = []
    for spec in specs:
        unknown = sorted(set(spec) - _SPEC_KEYS)
        if unknown:
            raise InvalidRequestError(f"unsupported field(s) in model_specs: {', '.join(unknown)}",
                                      param=f"model_specs.{unknown[0]}")
        fmt = str(spec.get("model_format") or "pytorch")
        quantizations = spec.get("quantizations") or [spec.get("quantization") or "none"]
        entry: dict[str, Any] = {"format": fmt, "quantizations": list(quantizations)}
        if spec.get("model_size_in_billions") is not None:
            entry["sizes_b"] = [_size(spec["model_size_in_billions"])]
        if spec.get("model_id"):
            entry["sources"] = {"huggingface": spec["model_id"]}
        entries.append(entry)
    first = specs[0]
    if first.get("model_id"):
        extra["model_id"] = first["model_id"]
    if first.get("model_uri"):
        uri = str(first["model_uri"])
        extra["model_path"] = uri[len("file://"):] if uri.startswith("file://") else uri
    extra["formats"] = entries
    if data.get("dimensions") is not None:
        extra["dimensions"] = data["dimensions"]
    out: dict[str, Any] = {
        "name": name,
        "abilities": abilities,
        "engines": _engines(kind, [e["format"] for e in entries], engines),
        "description": str(data.get("model_description") or ""),
        "extra": extra,
    }
    context = data.get("context_length") if kind == "LLM" else data.get("max_tokens", data.get("context_length"))
    if context is not None:
        out["context_length"] = context
    if data.get("virtualenv") is not None:
        out["virtualenv"] = data["virtualenv"]
    return out


def _size(value: Any) -> float | int:
    try:
        size = float(str(value).replace("_", "."))
    except ValueError:
        raise InvalidRequestError(f"model_size_in_billions must be a number, got {value!r}",
                                  param="model_specs.model_size_in_billions") from None
    shown = display_size(size)
    assert shown is not None
    return shown


def _engines(kind: str, fmts: list[str], known: Container[str]) -> list[str]:
    wanted: list[str] = []
    for fmt in fmts:
        candidates = (EMBEDDING_ENGINES if kind == "embedding" else RERANK_ENGINES if kind == "rerank"
                      else FORMAT_ENGINES.get(fmt.lower()))
        if candidates is None:
            raise InvalidRequestError(
                f"model_format {fmt!r} is not loaded by any xinfd engine (known: {', '.join(FORMAT_ENGINES)})",
                param="model_specs.model_format")
        wanted += [e for e in candidates if e not in wanted]
    usable = [e for e in wanted if e in known]
    if not usable:
        raise InvalidRequestError(
            f"no engine of this daemon loads {', '.join(fmts)} weights (it would need {', '.join(wanted)})",
            param="model_specs.model_format")
    return usable


def model_specs(spec: ModelSpec) -> list[dict[str, Any]]:
    """The family's variants in Xinference's ``model_specs`` shape (one per format and size)."""
    rows = []
    for entry in formats(spec):
        sources = entry.get("sources") if isinstance(entry.get("sources"), Mapping) else {}
        sizes = entry.get("sizes_b") if isinstance(entry.get("sizes_b"), list) else [None]
        for size in sizes or [None]:
            template = sources.get("huggingface") if isinstance(sources, Mapping) else None
            model_id = template.replace("{size}", str(size)) if isinstance(template, str) else None
            rows.append({
                "model_format": entry["format"],
                "model_size_in_billions": size,
                "quantizations": list(entry.get("quantizations") or []),
                "model_id": model_id,
                "model_hub": "huggingface",
            })
    return rows


def family_description(spec: ModelSpec, source: str) -> dict[str, Any]:
    """One family as ``GET /v1/model_registrations/{type}/{name}`` answers (Xinference's keys, then xinfd's)."""
    kind = model_type(spec.abilities)
    body: dict[str, Any] = {
        "version": 2,
        "model_type": kind,
        "model_name": spec.name,
        "model_description": spec.description,
        "model_ability": model_ability(spec.abilities),
        "model_lang": list(spec.extra.get("model_lang", spec.extra.get("language", [])) or []),
        "context_length": spec.context_length,
        "model_specs": model_specs(spec),
        "is_builtin": source != "user",
        "engines": list(spec.engines),
        "abilities": list(spec.abilities),
        "source": source,
    }
    if kind == "embedding":
        body["dimensions"] = spec.extra.get("dimensions")
        body["max_tokens"] = spec.context_length
    return body


def registration_rows(families: Mapping[str, ModelSpec], sources: Mapping[str, str], kind: str,
                      detailed: bool) -> list[dict[str, Any]]:
    """``GET /v1/model_registrations/{type}``: ``{"model_name", "is_builtin"}`` per family of the type."""
    rows = []
    for name in sorted(families, key=str.lower):
        spec = families[name]
        if model_type(spec.abilities) != kind:
            continue
        source = sources.get(name, "builtin")
        rows.append(family_description(spec, source) if detailed
                    else {"model_name": name, "is_builtin": source != "user"})
    return rows


def engine_params(spec: ModelSpec, plugins: Plugins, platform: Platform) -> dict[str, Any]:
    """``GET /v1/engines/{name}``: per engine, the variants it can launch, or the reason it cannot."""
    result: dict[str, Any] = {}
    variants = model_specs(spec) or [{"model_format": None, "model_size_in_billions": None, "quantizations": []}]
    for engine in spec.engines:
        if engine not in plugins.engines:
            result[engine] = f"engine {engine!r} is not installed in this daemon"
            continue
        avail = plugins.availability(engine, spec, platform)
        if not avail.available:
            result[engine] = avail.reason or f"engine {engine!r} is unavailable"
            continue
        fitting = [v for v in variants if v["model_format"] is None
                   or engine in FORMAT_ENGINES.get(str(v["model_format"]).lower(), (engine,))
                   or engine in EMBEDDING_ENGINES or engine in RERANK_ENGINES]
        result[engine] = [{
            "model_name": spec.name,
            "model_format": v["model_format"],
            "model_size_in_billions": v["model_size_in_billions"],
            "quantizations": v["quantizations"],
        } for v in fitting] or f"engine {engine!r} loads none of this family's formats"
    return result
