"""OpenAI-compatible request validation and response bodies (pure functions, no aiohttp).

The worker host (``xinfd.worker.host``) is thin HTTP glue over this module. Nothing here imports aiohttp, so
the daemon's front end can run the same validators before it proxies a request, and a client gets the same 400
with the same ``param`` whether the daemon or the replica rejected it.

Validation raises ``xinfd.errors.InvalidRequestError`` with ``param`` naming the offending field (OpenAI
style, ``messages[2].role``); ``error_envelope`` turns any error into
``{"error": {message, type, param, code}}``.
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from xinfd.errors import InvalidRequestError, XinfdError
from xinfd.types import ChatMessage

JsonObject = dict[str, Any]
CompletionKind = Literal["chat", "text"]
EncodingFormat = Literal["float", "base64"]

# "developer" is OpenAI's newer name for the system role (o1 and later); templates only know "system".
_ROLES: Mapping[str, Literal["system", "user", "assistant", "tool"]] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
# Request ids travel in a header and in URLs (/abort/{id}); anything else is replaced by a fresh id.
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


# -- requests ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingParams:
    """The sampling fields shared by chat and text completions, validated.

    ``max_tokens`` is ``None`` when the client did not ask for a limit; ``max_tokens_param`` remembers which
    of ``max_tokens`` / ``max_completion_tokens`` the client used, so an error names the field it sent.
    """

    max_tokens: int | None = None
    max_tokens_param: str = "max_tokens"
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatRequest:
    """A validated ``POST /v1/chat/completions`` body."""

    messages: tuple[ChatMessage, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stream: bool = False
    include_usage: bool = False
    # ``chat_template_kwargs``: passed to the model's ``render_chat`` as its options.
    template_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionRequest:
    """A validated ``POST /v1/completions`` body (one prompt per request)."""

    prompt: str
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stream: bool = False
    include_usage: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbeddingRequest:
    """A validated ``POST /v1/embeddings`` body."""

    texts: tuple[str, ...]
    # The openai Python SDK asks for base64 by default and decodes it itself, so both formats are needed.
    encoding_format: EncodingFormat = "float"


def new_request_id() -> str:
    """A fresh request id (also the suffix of the response id, so logs and responses can be matched)."""
    return uuid.uuid4().hex


def is_valid_request_id(value: str) -> bool:
    """Whether a caller-supplied id (the daemon passes its own, to abort by it) is safe to reuse."""
    return bool(_REQUEST_ID_RE.match(value))


def parse_json_object(raw: bytes) -> Mapping[str, Any]:
    """Decode a request body that must be a JSON object."""
    try:
        body = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequestError(f"request body must be a JSON object, not {_json_type(body)}")
    return body


def parse_chat_request(body: Mapping[str, Any]) -> ChatRequest:
    """Validate a chat-completion body; the messages keep only what a chat template needs."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequestError("'messages' must be a list of message objects", param="messages")
    if not messages:
        raise InvalidRequestError("'messages' must contain at least one message", param="messages")
    options = body.get("chat_template_kwargs")
    if options is None:
        options = {}
    elif not isinstance(options, dict):
        raise InvalidRequestError("'chat_template_kwargs' must be an object", param="chat_template_kwargs")
    stream, include_usage = _parse_stream(body)
    return ChatRequest(
        messages=tuple(_parse_message(m, i) for i, m in enumerate(messages)),
        sampling=parse_sampling(body),
        stream=stream,
        include_usage=include_usage,
        template_options=options,
    )


def parse_completion_request(body: Mapping[str, Any]) -> CompletionRequest:
    """Validate a text-completion body. Batched prompts and token-id prompts are refused, not guessed at."""
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise InvalidRequestError(
                f"exactly one prompt per request is supported, got a list of {len(prompt)}", param="prompt"
            )
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidRequestError(
            "'prompt' must be a string (token-id prompts are not supported)", param="prompt"
        )
    stream, include_usage = _parse_stream(body)
    return CompletionRequest(
        prompt=prompt, sampling=parse_sampling(body), stream=stream, include_usage=include_usage
    )


def parse_embedding_request(body: Mapping[str, Any]) -> EmbeddingRequest:
    """Validate an embeddings body: ``input`` is a string or a non-empty list of strings."""
    raw = body.get("input")
    texts: tuple[str, ...]
    if isinstance(raw, str):
        texts = (raw,)
    elif isinstance(raw, list) and raw and all(isinstance(t, str) for t in raw):
        texts = tuple(raw)
    else:
        raise InvalidRequestError(
            "'input' must be a string or a non-empty list of strings (token ids are not supported)",
            param="input",
        )
    raw_format = body.get("encoding_format")
    fmt: EncodingFormat
    if raw_format is None or raw_format == "float":
        fmt = "float"
    elif raw_format == "base64":
        fmt = "base64"
    else:
        raise InvalidRequestError("'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    if body.get("dimensions") is not None:
        # Silently returning full-size vectors would hand the client the wrong shape.
        raise InvalidRequestError("'dimensions' is not supported by this model", param="dimensions")
    return EmbeddingRequest(texts=texts, encoding_format=fmt)


def parse_sampling(body: Mapping[str, Any]) -> SamplingParams:
    """Validate the sampling fields; absent or ``null`` fields take the OpenAI defaults."""
    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise InvalidRequestError("only n=1 is supported", param="n")
    # max_completion_tokens is OpenAI's current name; max_tokens the deprecated one most clients still send.
    param = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(param)
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise InvalidRequestError(f"'{param}' must be a positive integer, got {max_tokens!r}", param=param)
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise InvalidRequestError(f"'seed' must be an integer, got {seed!r}", param="seed")
    return SamplingParams(
        max_tokens=max_tokens,
        max_tokens_param=param,
        temperature=_number(body, "temperature", default=1.0, low=0.0, high=2.0, low_open=False),
        top_p=_number(body, "top_p", default=1.0, low=0.0, high=1.0, low_open=True),
        stop=_parse_stop(body.get("stop")),
        seed=seed,
    )


def resolve_max_tokens(
    sampling: SamplingParams, *, prompt_tokens: int, context_length: int, cap: int | None, prompt_param: str
) -> int:
    """The completion budget: what the client asked for (or all the room left), clamped to the operator's cap.

    A request above the cap is clamped rather than refused, because the cap is the operator's limit, not the
    client's mistake. A request that does not fit the context is refused with the token counts (as OpenAI).
    """
    room = context_length - prompt_tokens
    if room < 1:
        raise InvalidRequestError(
            f"the prompt is {prompt_tokens} tokens long but the model's context length is {context_length} "
            f"tokens, which leaves no room for a completion",
            param=prompt_param,
        )
    wanted = room if sampling.max_tokens is None else sampling.max_tokens
    if cap is not None:
        wanted = min(wanted, cap)
    if wanted > room:
        raise InvalidRequestError(
            f"the model's context length is {context_length} tokens, but {prompt_tokens + wanted} were "
            f"requested ({prompt_tokens} in the prompt, {wanted} for the completion); "
            f"lower '{sampling.max_tokens_param}'",
            param=sampling.max_tokens_param,
        )
    return wanted


def check_context(counts: Sequence[int], *, context_length: int, param: str) -> None:
    """Refuse embedding inputs longer than the context, naming the first offender."""
    for index, count in enumerate(counts):
        if count > context_length:
            raise InvalidRequestError(
                f"input {index} is {count} tokens long; the model's context length is {context_length}",
                param=param,
            )


# -- responses -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Token counts of one request."""

    prompt_tokens: int
    completion_tokens: int = 0

    def as_dict(self) -> JsonObject:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionFormat:
    """Builds every body of one chat or text completion response, whole or as stream chunks.

    One object per request keeps ``id``, ``created`` and ``model`` identical across chunks, as clients expect.
    """

    kind: CompletionKind
    response_id: str
    model: str
    created: int
    include_usage: bool = False

    @classmethod
    def new(
        cls, kind: CompletionKind, request_id: str, model: str, *, include_usage: bool = False
    ) -> CompletionFormat:
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        return cls(
            kind=kind,
            response_id=prefix + request_id,
            model=model,
            created=int(time.time()),
            include_usage=include_usage,
        )

    def full(self, text: str, finish_reason: str, usage: Usage) -> JsonObject:
        """The non-streamed response."""
        if self.kind == "chat":
            choice: JsonObject = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        choice.update(logprobs=None, finish_reason=finish_reason)
        body = self._head(chunk=False)
        body.update(choices=[choice], usage=usage.as_dict())
        return body

    def opening_chunk(self) -> JsonObject | None:
        """Chat streams announce the assistant role before any content; text streams have no opening."""
        return self._chunk({"role": "assistant", "content": ""}, None) if self.kind == "chat" else None

    def delta_chunk(self, text: str) -> JsonObject:
        return self._chunk({"content": text} if self.kind == "chat" else text, None)

    def closing_chunk(self, finish_reason: str) -> JsonObject:
        return self._chunk({} if self.kind == "chat" else "", finish_reason)

    def usage_chunk(self, usage: Usage) -> JsonObject:
        """The extra last chunk sent when ``stream_options.include_usage`` is set (no choices, only usage)."""
        body = self._head(chunk=True)
        body.update(choices=[], usage=usage.as_dict())
        return body

    def _chunk(self, delta: JsonObject | str, finish_reason: str | None) -> JsonObject:
        choice: JsonObject = {"index": 0}
        if self.kind == "chat":
            choice["delta"] = delta
        else:
            choice["text"] = delta
        choice.update(logprobs=None, finish_reason=finish_reason)
        body = self._head(chunk=True)
        body["choices"] = [choice]
        if self.include_usage:
            body["usage"] = None  # OpenAI sends usage: null on every chunk but the usage chunk
        return body

    def _head(self, *, chunk: bool) -> JsonObject:
        obj = {"chat": "chat.completion", "text": "text_completion"}[self.kind]
        if chunk and self.kind == "chat":
            obj = "chat.completion.chunk"
        return {"id": self.response_id, "object": obj, "created": self.created, "model": self.model}


def embeddings_body(
    vectors: Sequence[Sequence[float]], *, model: str, prompt_tokens: int, encoding_format: EncodingFormat
) -> JsonObject:
    """The embeddings response; base64 is little-endian float32, the layout the openai SDK decodes."""
    data = []
    for index, vector in enumerate(vectors):
        embedding: list[float] | str
        if encoding_format == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        else:
            embedding = [float(x) for x in vector]
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def error_envelope(
    message: str,
    *,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> JsonObject:
    """OpenAI's error body, which every OpenAI client knows how to surface."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_from_exception(exc: XinfdError) -> JsonObject:
    """The envelope of a typed xinfd error (its stable code, type and param)."""
    return error_envelope(exc.message, error_type=exc.error_type, param=exc.param, code=exc.code)


# -- helpers -------------------------------------------------------------------------------------------------


def _parse_message(raw: object, index: int) -> ChatMessage:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"{where} must be an object with 'role' and 'content'", param=where)
    role = raw.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise InvalidRequestError(
            f"{where} has unknown role {role!r}; expected one of {', '.join(_ROLES)}", param=f"{where}.role"
        )
    content = raw.get("content")
    if content is None and role == "assistant":
        content = ""  # an assistant turn that only made tool calls has no content
    elif isinstance(content, list):
        content = _join_text_parts(content, where)
    if not isinstance(content, str):
        raise InvalidRequestError(
            f"{where}.content must be a string or a list of text parts, not {_json_type(content)}",
            param=f"{where}.content",
        )
    return ChatMessage(role=_ROLES[role], content=content)


def _join_text_parts(parts: list[Any], where: str) -> str:
    texts = []
    for j, part in enumerate(parts):
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            kind = part.get("type") if isinstance(part, dict) else _json_type(part)
            raise InvalidRequestError(
                f"{where}.content[{j}]: only text parts are supported (got {kind!r})",
                param=f"{where}.content",
            )
        texts.append(part["text"])
    return "\n".join(texts)  # the same joining as vLLM, so prompts match between engines


def _parse_stream(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequestError("'stream' must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise InvalidRequestError("'stream_options' must be an object", param="stream_options")
    include_usage = options.get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise InvalidRequestError("'include_usage' must be a boolean", param="stream_options.include_usage")
    return stream, bool(include_usage) and stream


def _parse_stop(raw: object) -> tuple[str, ...]:
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise InvalidRequestError("'stop' must be a string or a list of strings", param="stop")
    # An empty stop string would match at once and end every completion; it can only be a client slip.
    return tuple(s for s in items if s)


def _number(
    body: Mapping[str, Any], name: str, *, default: float, low: float, high: float, low_open: bool
) -> float:
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise InvalidRequestError(f"'{name}' must be a number in {interval}, got {value!r}", param=name)
    return float(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
