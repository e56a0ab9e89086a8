"""Optional OpenAI request fields, and the refusal of those an engine cannot honour (pure, no aiohttp).

An engine declares what it honours in ``Engine.request_features`` (names from ``FEATURES``); a request that
uses any other is refused with a 400 naming the field and the engine, by the daemon before it forwards and by
the worker host, so no field is silently ignored. A field set to its "off" value (``logprobs: false``,
``tools: []``, ``n: 1``, ``response_format: {"type": "text"}``, penalties of 0) uses nothing and passes.
Engines with their own server (``request_features = None``: vLLM, SGLang) see every field untouched.

Fields the validators honour for every engine are not listed here: ``messages``/``prompt``, ``max_tokens``,
``max_completion_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``, ``stream``, ``stream_options``,
``chat_template_kwargs``; nor are fields that cannot change an answer (``user``, ``metadata``, ``store``,
``service_tier``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from xinfd.errors import InvalidRequestError

# feature -> the fields it covers, each with its test for "this request uses it".
_Used = Callable[[Any], bool]


def _set(value: Any) -> bool:
    return value is not None and value is not False


def _nonempty(value: Any) -> bool:
    return value is not None and value != [] and value != {} and value != ""


def _above_one(value: Any) -> bool:
    return value is not None and value != 1


def _nonzero(value: Any) -> bool:
    return value is not None and value != 0


def _not_text(value: Any) -> bool:
    return value is not None and value != {"type": "text"}


def _tool_choice(value: Any) -> bool:
    return value is not None and value != "none"


FEATURES: Mapping[str, Mapping[str, _Used]] = {
    "logprobs": {"logprobs": _set, "top_logprobs": _set},
    "response_format": {"response_format": _not_text},
    "tools": {"tools": _nonempty, "tool_choice": _tool_choice, "parallel_tool_calls": _set,
              "functions": _nonempty, "function_call": _tool_choice},
    "n": {"n": _above_one, "best_of": _above_one},
    "logit_bias": {"logit_bias": _nonempty},
    "penalties": {"presence_penalty": _nonzero, "frequency_penalty": _nonzero},
    "echo": {"echo": _set},
    "suffix": {"suffix": _nonempty},
    "audio": {"audio": _set, "modalities": lambda v: v is not None and v != ["text"]},
    "prediction": {"prediction": _set},
    "reasoning_effort": {"reasoning_effort": _set},
    "web_search": {"web_search_options": _set},
}
_FIELD_FEATURE = {name: feature for feature, fields in FEATURES.items() for name in fields}


def check_request_features(body: Mapping[str, Any], *, engine: str, supported: frozenset[str] | None) -> None:
    """Refuse the first optional field ``body`` uses that ``engine`` does not honour.

    :param supported: the engine's ``request_features``; ``None`` (own server) checks nothing.
    :raises InvalidRequestError: 400 with ``param`` set to the field.
    """
    if supported is None:
        return
    for name, value in body.items():
        feature = _FIELD_FEATURE.get(name)
        if feature is None or feature in supported or not FEATURES[feature][name](value):
            continue
        honoured = ", ".join(sorted(supported)) or "none of them"
        raise InvalidRequestError(
            f"'{name}' is not supported by engine {engine!r} (optional features it honours: {honoured})",
            param=name,
        )
