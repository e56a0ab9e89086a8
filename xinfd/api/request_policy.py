"""The daemon's request policy: what it changes in a request before forwarding it to a replica.

Applied in the daemon, not in the engines, so it holds for every engine alike — xinfd's worker host as well as
servers xinfd does not control (vLLM, SGLang) — and a SIGHUP changes it at once, for running replicas too:

* ``XINFERENCE_MAX_TOKENS`` caps completion tokens: a larger ``max_tokens`` / ``max_completion_tokens`` is
  lowered to the cap (the spec's "global max tokens limit override for requests").
* A request that sets neither gets a bounded ``max_tokens``: the family's ``default_max_tokens``, else the
  daemon's ``default_max_tokens``, never above the family's ``context_length``, and the cap wins. Without it
  a small model sampled at OpenAI's defaults generates until its context is full (minutes on a CPU). The
  replica is told that the value is a default (``DEFAULTED_LIMIT_HEADER``), so xinfd's worker host lowers it
  to the room the prompt leaves rather than refusing the request.
* The family's recommended sampling (``ModelSpec.sampling``: temperature, top_p, top_k, repetition_penalty) is
  added for each field the request leaves unset (absent or null).
* Default chat-template arguments of the replica's launch (``LaunchSpec.chat_template_kwargs``, e.g.
  ``enable_thinking`` from ``--enable-thinking``) are added to every chat request; a request's own value for
  the same key wins.

The client's bytes are forwarded unchanged when the policy changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from xinfd.sampling_defaults import DEFAULTED_LIMIT_HEADER

__all__ = ["DEFAULTED_LIMIT_HEADER", "default_budget", "forwarded_body", "sets_no_limit"]

_GENERATING = ("chat/completions", "completions")

# OpenAI's current name for chat, and the deprecated one most clients still send (completions know only it).
_LIMIT_FIELDS = {"chat/completions": ("max_completion_tokens", "max_tokens"), "completions": ("max_tokens",)}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def sets_no_limit(body: Mapping[str, Any], endpoint: str) -> bool:
    """Whether a generating request leaves its completion budget to the daemon's default."""
    return endpoint in _GENERATING and all(body.get(name) is None for name in _LIMIT_FIELDS[endpoint])


def default_budget(*, family: int | None, daemon: int, context_length: int, cap: int | None) -> int:
    """The ``max_tokens`` of a request that sets none: the family's default, else the daemon's, within the
    context and the operator's cap."""
    budget = min(family if family is not None else daemon, context_length)
    return budget if cap is None else min(budget, cap)


def _capped(body: Mapping[str, Any], endpoint: str, cap: int) -> dict[str, Any]:
    """The limit fields to overwrite so that the request generates at most ``cap`` tokens."""
    fields = _LIMIT_FIELDS[endpoint]
    given = {name: body[name] for name in fields if body.get(name) is not None}
    if not given:
        return {"max_tokens": cap}
    # A value of the wrong type is left for the replica's validator, which names the field in its 400.
    return {name: cap for name, value in given.items() if _is_int(value) and value > cap}


def _with_template_defaults(body: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    own = body.get("chat_template_kwargs")
    if own is None:
        own = {}
    if not isinstance(own, Mapping):
        return {}  # not an object: the replica's validator refuses it, naming the field
    merged = {**defaults, **own}
    return {"chat_template_kwargs": merged} if merged != own else {}


def forwarded_body(
    raw: bytes,
    body: Mapping[str, Any],
    endpoint: str,
    *,
    max_tokens: int | None,
    chat_template_kwargs: Mapping[str, Any],
    default_max_tokens: int | None = None,
    sampling: Mapping[str, Any] | None = None,
) -> bytes:
    """The request body a replica receives: ``raw`` itself, or ``body`` with the policy's changes.

    ``max_tokens`` is the operator's cap; ``default_max_tokens`` the budget of a request without a limit
    (``default_budget``, already within the cap); ``sampling`` the family's recommended settings.
    """
    if endpoint not in _GENERATING:
        return raw
    changes: dict[str, Any] = {}
    if default_max_tokens is not None and sets_no_limit(body, endpoint):
        changes["max_tokens"] = default_max_tokens if max_tokens is None else min(default_max_tokens, max_tokens)
    elif max_tokens is not None:
        changes |= _capped(body, endpoint, max_tokens)
    if sampling:
        changes |= {name: value for name, value in sampling.items() if body.get(name) is None}
    if chat_template_kwargs and endpoint == "chat/completions":
        changes |= _with_template_defaults(body, chat_template_kwargs)
    if not changes:
        return raw
    return json.dumps({**body, **changes}, ensure_ascii=False).encode()
