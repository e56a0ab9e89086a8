"""Log probabilities in OpenAI's request and response shapes (pure, standard library only).

Requests: chat asks with ``logprobs: true`` and optionally ``top_logprobs: N`` (0..20, only with
``logprobs: true``); text completions with ``logprobs: N`` (0..5 in OpenAI's API, 20 here as in vLLM). Both
become one number, ``GenerateRequest.logprobs``: ``None`` (not asked) or how many alternatives per token.

Responses: chat ``choices[].logprobs = {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token",
"logprob", "bytes"}]}]}``; text completions ``{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}],
"text_offset"}``. Streamed chunks carry the entries of their own tokens, ``text_offset`` counted from the start
of the completion. Engines produce ``xinfd.types.TokenLogprob`` values; ``logprobs_for_tokens`` (computing them
from a step's logits) lives in the engines, which have torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from xinfd.errors import InvalidRequestError
from xinfd.types import TokenLogprob

MAX_TOP_LOGPROBS = 20


def parse_logprobs(body: Mapping[str, Any], kind: Literal["chat", "completion"]) -> int | None:
    """The number of alternatives asked for, or ``None``; refuses malformed values naming the field."""
    raw = body.get("logprobs")
    top = body.get("top_logprobs")
    if kind == "completion":
        if top is not None:
            raise InvalidRequestError("'top_logprobs' is a chat field; text completions take 'logprobs: N'",
                                      param="top_logprobs")
        if raw is None:
            return None
        return _count(raw, "logprobs")
    if raw is not None and not isinstance(raw, bool):
        raise InvalidRequestError(f"'logprobs' must be a boolean, got {raw!r}", param="logprobs")
    if top is not None and not raw:
        raise InvalidRequestError("'top_logprobs' requires 'logprobs: true'", param="top_logprobs")
    if not raw:
        return None
    return 0 if top is None else _count(top, "top_logprobs")


def _count(value: object, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOP_LOGPROBS:
        raise InvalidRequestError(f"'{param}' must be an integer in [0, {MAX_TOP_LOGPROBS}], got {value!r}",
                                  param=param)
    return value


def _finite(value: float) -> float:
    # JSON has no -Infinity; a token the model rules out entirely gets OpenAI's floor of -9999.0.
    return value if math.isfinite(value) else -9999.0


def chat_logprobs(tokens: Sequence[TokenLogprob]) -> dict[str, Any]:
    """A chat choice's (or chunk's) ``logprobs`` object."""

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": _finite(logprob), "bytes": list(token.encode())}

    return {"content": [
        {**entry(t.token, t.logprob), "top_logprobs": [entry(alt, lp) for alt, lp in t.top]} for t in tokens
    ]}


def completion_logprobs(tokens: Sequence[TokenLogprob], *, offset: int = 0) -> dict[str, Any]:
    """A text choice's (or chunk's) ``logprobs`` object; ``offset`` is where its text starts in the completion."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [_finite(t.logprob) for t in tokens],
        "top_logprobs": [{alt: _finite(lp) for alt, lp in t.top} for t in tokens],
        "text_offset": offsets,
    }
