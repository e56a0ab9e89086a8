"""Sampling fields beyond OpenAI's own, and a model family's recommended sampling settings.

A small model sampled at OpenAI's defaults (``temperature=1``, ``top_p=1``) rambles until its context is full;
its authors publish the settings it answers well with (SmolLM2's model card: ``temperature=0.2``,
``top_p=0.9``). A family's JSON carries them as ``"sampling": {...}`` and the daemon adds them to every request
that does not set the same field (``xinfd.api.request_policy``), for every engine alike. The worker host adds,
for the fields still unset, the defaults its engine read from the weights (``generation_config.json``).

``top_k`` and ``repetition_penalty`` are not OpenAI fields but vLLM's and SGLang's extra sampling parameters,
with their meaning: ``top_k`` 0 or -1 disables it, ``repetition_penalty`` 1.0 is none.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from xinfd.errors import InvalidRequestError

if TYPE_CHECKING:
    from xinfd.openai_protocol import SamplingParams

# Sent by the daemon with a request whose max_tokens it filled in (``xinfd.api.request_policy``): the value is a
# default, so xinfd's worker host lowers it to the room the prompt leaves instead of refusing the request.
DEFAULTED_LIMIT_HEADER = "X-Xinfd-Default-Max-Tokens"

# The fields a family's "sampling" may set, in the order documented.
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_top_k(value: object, *, param: str = "top_k") -> int | None:
    """A valid ``top_k`` as the engines take it: ``None`` when absent or disabled (0 or -1)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise InvalidRequestError(f"'{param}' must be an integer >= 1 (0 or -1: off), got {value!r}", param=param)
    return value if value > 0 else None


def check_repetition_penalty(value: object, *, param: str = "repetition_penalty") -> float | None:
    """A valid ``repetition_penalty`` (> 0, at most 2 as in vLLM); ``None`` when absent."""
    if value is None:
        return None
    if not _is_number(value) or not 0 < float(value) <= 2:  # type: ignore[arg-type]
        raise InvalidRequestError(f"'{param}' must be a number in (0, 2], got {value!r}", param=param)
    return float(value)  # type: ignore[arg-type]


def check_field(name: str, value: object, *, param: str | None = None) -> float | int | None:
    """A valid value of one of ``SAMPLING_FIELDS`` as the engines take it (``None``: absent, or top_k off)."""
    param = param or name
    if name == "top_k":
        return check_top_k(value, param=param)
    if name == "repetition_penalty":
        return check_repetition_penalty(value, param=param)
    if value is None:
        return None
    high = 2.0 if name == "temperature" else 1.0
    if not _is_number(value) or not 0 <= float(value) <= high or (name == "top_p" and value == 0):  # type: ignore[arg-type]
        low = "(0" if name == "top_p" else "[0"
        raise InvalidRequestError(f"'{param}' must be a number in {low}, {high:g}], got {value!r}", param=param)
    return float(value)  # type: ignore[arg-type]


def family_sampling(data: object, where: str) -> dict[str, float | int]:
    """Validate a family's ``"sampling"`` object; every problem names ``where`` and the field."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidRequestError(f"{where}: 'sampling' must be an object", param="sampling")
    unknown = sorted(set(data) - set(SAMPLING_FIELDS))
    if unknown:
        raise InvalidRequestError(
            f"{where}: 'sampling' takes only {', '.join(SAMPLING_FIELDS)}; not {', '.join(unknown)}",
            param="sampling",
        )
    out: dict[str, float | int] = {}
    for name, value in data.items():
        try:
            checked = check_field(name, value, param=f"sampling.{name}")
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"{where}: {exc}", param=exc.param) from None
        if checked is not None:
            out[name] = checked
    return out


def unset_fields(body: Mapping[str, Any]) -> frozenset[str]:
    """The sampling fields a request leaves to the model's defaults (absent or ``null``)."""
    return frozenset(name for name in SAMPLING_FIELDS if body.get(name) is None)


def with_model_defaults(sampling: SamplingParams, defaults: Mapping[str, Any] | None) -> SamplingParams:
    """``sampling`` with the loaded model's own defaults (a ``TextModel``'s optional ``sampling_defaults``, e.g.
    the weights' ``generation_config.json``) in the fields the request left unset. Invalid values are
    dropped, not raised: they come from the weights, not from the client."""
    if not defaults:
        return sampling
    changes: dict[str, Any] = {}
    for name in sampling.unset:
        try:
            value = check_field(name, defaults.get(name))
        except InvalidRequestError:
            continue
        if value is not None:
            changes[name] = value
    return dataclasses.replace(sampling, **changes) if changes else sampling
