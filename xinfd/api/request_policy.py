"""The daemon's request policy: what it changes in a request before forwarding it to a replica.

Applied in the daemon, not in the engines, so it holds for every engine alike — xinfd's worker host as well as
servers xinfd does not control (vLLM, SGLang) — and a SIGHUP changes it at once, for running replicas too:

* ``XINFERENCE_MAX_TOKENS`` caps completion tokens: a larger ``max_tokens`` / ``max_completion_tokens`` is
  lowered to the cap, and a request that sets neither gets ``max_tokens`` = the cap (the spec's "global max
  tokens limit override for requests").
* Default chat-template arguments of the replica's launch (``LaunchSpec.chat_template_kwargs``, e.g.
  ``enable_thinking`` from ``--enable-thinking``) are added to every chat request; a request's own value for
  the same key wins.

The client's bytes are forwarded unchanged when the policy changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

_GENERATING = ("chat/completions", "completions")
# OpenAI's current name for chat, and the deprecated one most clients still send (completions know only it).
_LIMIT_FIELDS = {"chat/completions": ("max_completion_tokens", "max_tokens"), "completions": ("max_tokens",)}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
) -> bytes:
    """The request body a replica receives: ``raw`` itself, or ``body`` with the policy's changes."""
    if endpoint not in _GENERATING:
        return raw
    changes: dict[str, Any] = {}
    if max_tokens is not None:
        changes |= _capped(body, endpoint, max_tokens)
    if chat_template_kwargs and endpoint == "chat/completions":
        changes |= _with_template_defaults(body, chat_template_kwargs)
    if not changes:
        return raw
    return json.dumps({**body, **changes}, ensure_ascii=False).encode()
