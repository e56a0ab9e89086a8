"""OpenAI-compatible request validation and response bodies (pure functions, no aiohttp).

The worker host (``xinfd.worker.host``) is thin HTTP glue over this module. Nothing here imports aiohttp, so
the daemon's front end can run the same validators before it proxies, and a client gets the same 400 with the
same ``param`` (OpenAI style: ``messages[2].role``) whether the daemon or the replica refused the request.

Over 400 lines: it is the one validator of every OpenAI request field (chat, completions, embeddings, images
parts, logprobs, sampling) shared by the daemon and the worker; the response formatting (CompletionFormat) is
the next piece to split out.
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
from xinfd.logprobs import parse_logprobs
from xinfd.sampling_defaults import check_repetition_penalty, check_top_k, unset_fields
from xinfd.template_kwargs import validate_chat_template_kwargs
from xinfd.types import ChatMessage, ImageInput, RequestKind

JsonObject = dict[str, Any]
# The kind of a generation (shared with ``GenerateRequest.kind``): which endpoint asked.
CompletionKind = RequestKind
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


# -- requests -----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingParams:
    """Validated sampling fields. ``max_tokens`` is ``None`` when the client set no limit;
    ``max_tokens_param`` is the field it used (``max_tokens`` or ``max_completion_tokens``), for errors."""

    max_tokens: int | None = None
    max_tokens_param: str = "max_tokens"
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # vLLM's extra sampling fields (``xinfd.sampling_defaults``); None: the engine's own default.
    top_k: int | None = None
    repetition_penalty: float | None = None
    # Sampling fields the request left unset, which the model's own defaults (generation_config) may fill.
    unset: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationRequest:
    """What chat and text completions share: sampling and streaming."""

    sampling: SamplingParams = field(default_factory=SamplingParams)
    stream: bool = False
    include_usage: bool = False  # ``stream_options.include_usage``; only meaningful when streaming
    # ``GenerateRequest.logprobs``: None when not asked, else how many alternatives per token (``top_logprobs``
    # for chat, ``logprobs: N`` for text completions; ``xinfd.logprobs.parse_logprobs``).
    logprobs: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatRequest(GenerationRequest):
    """A validated ``POST /v1/chat/completions`` body."""

    messages: tuple[ChatMessage, ...]
    # ``chat_template_kwargs`` (checked by ``xinfd.template_kwargs``): the model's ``render_chat`` options.
    template_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionRequest(GenerationRequest):
    """A validated ``POST /v1/completions`` body (one prompt per request)."""

    prompt: str


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
        raise _invalid(None, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _invalid(None, f"request body must be a JSON object, not {_json_type(body)}")
    return body


def parse_chat_request(body: Mapping[str, Any]) -> ChatRequest:
    """Validate a chat-completion body; the messages keep only what a chat template needs."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _invalid("messages", "'messages' must be a list of message objects")
    if not messages:
        raise _invalid("messages", "'messages' must contain at least one message")
    options = validate_chat_template_kwargs(body)
    stream, include_usage = _parse_stream(body)
    return ChatRequest(
        messages=tuple(_parse_message(m, i) for i, m in enumerate(messages)),
        sampling=parse_sampling(body),
        stream=stream,
        include_usage=include_usage,
        template_options=options,
        logprobs=parse_logprobs(body, "chat"),
    )


def parse_completion_request(body: Mapping[str, Any]) -> CompletionRequest:
    """Validate a text-completion body. Batched prompts and token-id prompts are refused, not guessed at."""
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise _invalid("prompt", f"one prompt per request is supported, got a list of {len(prompt)}")
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _invalid("prompt", "'prompt' must be a string (token-id prompts are not supported)")
    stream, include_usage = _parse_stream(body)
    return CompletionRequest(
        prompt=prompt, sampling=parse_sampling(body), stream=stream, include_usage=include_usage,
        logprobs=parse_logprobs(body, "completion"),
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
        raise _invalid("input", "'input' must be a string or a non-empty list of strings (not token ids)")
    raw_format = body.get("encoding_format")
    fmt: EncodingFormat = "base64" if raw_format == "base64" else "float"
    if raw_format not in (None, "float", "base64"):
        raise _invalid("encoding_format", "'encoding_format' must be 'float' or 'base64'")
    if body.get("dimensions") is not None:
        # Silently returning full-size vectors would hand the client the wrong shape.
        raise _invalid("dimensions", "'dimensions' is not supported by this model")
    return EmbeddingRequest(texts=texts, encoding_format=fmt)


def parse_sampling(body: Mapping[str, Any]) -> SamplingParams:
    """Validate the sampling fields; absent or ``null`` fields take the OpenAI defaults."""
    n = body.get("n")
    if n is not None and (not _is_int(n) or n < 1):
        raise _invalid("n", f"'n' must be a positive integer, got {n!r}")  # n > 1: xinfd.request_features
    # max_completion_tokens is OpenAI's current name; max_tokens the deprecated one most clients still send.
    param = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(param)
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise _invalid(param, f"'{param}' must be a positive integer, got {max_tokens!r}")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise _invalid("seed", f"'seed' must be an integer, got {seed!r}")
    return SamplingParams(
        max_tokens=max_tokens,
        max_tokens_param=param,
        temperature=_number(body, "temperature", default=1.0, low=0.0, high=2.0, low_open=False),
        top_p=_number(body, "top_p", default=1.0, low=0.0, high=1.0, low_open=True),
        stop=_parse_stop(body.get("stop")),
        seed=seed,
        top_k=check_top_k(body.get("top_k")),
        repetition_penalty=check_repetition_penalty(body.get("repetition_penalty")),
        unset=unset_fields(body),
    )


def resolve_max_tokens(
    sampling: SamplingParams,
    *,
    prompt_tokens: int,
    context_length: int,
    cap: int | None,
    prompt_param: str,
    default: int | None = None,
    fit_to_room: bool = False,
) -> int:
    """The completion budget: what the client asked for (or ``default``, or all the room left), clamped to the
    operator's cap.

    A request above the cap is clamped rather than refused, because the cap is the operator's limit, not the
    client's mistake. A request that does not fit the context is refused with the token counts (as OpenAI),
    unless ``fit_to_room``: its ``max_tokens`` is a default the daemon filled in, not the client's limit.
    """
    room = context_length - prompt_tokens
    if room < 1:
        raise _invalid(
            prompt_param,
            f"the prompt is {prompt_tokens} tokens long but the model's context length is {context_length} "
            "tokens, which leaves no room for a completion",
        )
    wanted = (room if default is None else min(room, default)) if sampling.max_tokens is None else sampling.max_tokens
    if cap is not None:
        wanted = min(wanted, cap)
    if fit_to_room:
        wanted = min(wanted, room)
    if wanted > room:
        param = sampling.max_tokens_param
        raise _invalid(
            param,
            f"the model's context length is {context_length} tokens, but {prompt_tokens + wanted} were "
            f"requested ({prompt_tokens} in the prompt, {wanted} for the completion); lower '{param}'",
        )
    return wanted


def check_context(counts: Sequence[int], *, context_length: int, param: str) -> None:
    """Refuse embedding inputs longer than the context, naming the first offender."""
    for index, count in enumerate(counts):
        if count > context_length:
            raise _invalid(param, f"input {index} is {count} tokens; the model's context is {context_length}")


# -- responses ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Token counts of one request."""

    prompt_tokens: int
    completion_tokens: int = 0

    def as_dict(self) -> JsonObject:
        prompt, completion = self.prompt_tokens, self.completion_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionFormat:
    """Builds every body of one chat or text completion response, whole or as stream chunks.

    One object per request keeps ``id``, ``created`` and ``model`` identical across chunks, as clients expect.
    """

    kind: CompletionKind
    response_id: str
    model: str
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def new(cls, kind: CompletionKind, request_id: str, model: str, include_usage: bool) -> CompletionFormat:
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        return cls(kind=kind, response_id=prefix + request_id, model=model, include_usage=include_usage)

    def full(
        self, text: str, finish_reason: str, usage: Usage, *, reasoning: str = "", logprobs: JsonObject | None = None
    ) -> JsonObject:
        """The non-streamed response; ``reasoning`` is the message's ``reasoning_content`` (vLLM's name);
        ``logprobs`` the choice's, in the kind's shape (``xinfd.logprobs``)."""
        message: JsonObject = {"role": "assistant", "content": text}
        if reasoning:
            message["reasoning_content"] = reasoning
        content = {"message": message} if self.kind == "chat" else {"text": reasoning + text}
        choice = {"index": 0, **content, "logprobs": logprobs, "finish_reason": finish_reason}
        return {**self._head(chunk=False), "choices": [choice], "usage": usage.as_dict()}

    def opening_chunk(self) -> JsonObject | None:
        """Chat streams announce the assistant role before any content; text streams have no opening."""
        return self._chunk({"role": "assistant", "content": ""}, None) if self.kind == "chat" else None

    def delta_chunk(self, text: str, *, reasoning: str = "", logprobs: JsonObject | None = None) -> JsonObject:
        if self.kind == "completion":
            return self._chunk(reasoning + text, None, logprobs)
        return self._chunk({"reasoning_content": reasoning} if reasoning else {"content": text}, None, logprobs)

    def closing_chunk(self, finish_reason: str) -> JsonObject:
        return self._chunk({} if self.kind == "chat" else "", finish_reason)

    def usage_chunk(self, usage: Usage) -> JsonObject:
        """The extra last chunk sent when ``stream_options.include_usage`` is set (no choices, only usage)."""
        return {**self._head(chunk=True), "choices": [], "usage": usage.as_dict()}

    def _chunk(
        self, delta: JsonObject | str, finish_reason: str | None, logprobs: JsonObject | None = None
    ) -> JsonObject:
        key = "delta" if self.kind == "chat" else "text"
        body = self._head(chunk=True)
        body["choices"] = [{"index": 0, key: delta, "logprobs": logprobs, "finish_reason": finish_reason}]
        if self.include_usage:
            body["usage"] = None  # OpenAI sends usage: null on every chunk but the usage chunk
        return body

    def _head(self, *, chunk: bool) -> JsonObject:
        if self.kind == "completion":
            obj = "text_completion"  # OpenAI uses the same object name for text chunks
        else:
            obj = "chat.completion.chunk" if chunk else "chat.completion"
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
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


def error_envelope(
    message: str, *, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> JsonObject:
    """OpenAI's error body, which every OpenAI client knows how to surface."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_from_exception(exc: XinfdError) -> JsonObject:
    """The envelope of a typed xinfd error (its stable code, type and param)."""
    return error_envelope(exc.message, type_=exc.error_type, param=exc.param, code=exc.code)


# -- helpers ------------------------------------------------------------------------------------------------
def _invalid(param: str | None, message: str) -> InvalidRequestError:
    """The 400 of a field (``param``) in OpenAI's style; ``None`` for the body as a whole."""
    return InvalidRequestError(message, param=param)


def _parse_message(raw: object, index: int) -> ChatMessage:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise _invalid(where, f"{where} must be an object with 'role' and 'content'")
    role = raw.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise _invalid(f"{where}.role", f"unknown role {role!r}; expected one of {', '.join(_ROLES)}")
    content = raw.get("content")
    images: tuple[ImageInput, ...] = ()
    if content is None and role == "assistant":
        content = ""  # an assistant turn that only made tool calls has no content
    elif isinstance(content, list):
        content, images = _join_parts(content, where)
    if not isinstance(content, str):
        got = _json_type(content)
        raise _invalid(f"{where}.content", f"content must be a string or a list of text parts, not {got}")
    return ChatMessage(role=_ROLES[role], content=content, images=images)


def _join_parts(parts: list[Any], where: str) -> tuple[str, tuple[ImageInput, ...]]:
    """Text parts joined into the content; ``image_url`` parts (OpenAI's shape) kept apart, typed."""
    texts = []
    images = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else _json_type(part)
        if kind == "image_url" and isinstance(part, dict):
            images.append(_parse_image(part.get("image_url"), f"{where}.content", f"content[{j}].image_url"))
            continue
        if not (isinstance(part, dict) and kind == "text" and isinstance(part.get("text"), str)):
            raise _invalid(f"{where}.content",
                           f"content[{j}]: only text and image_url parts are supported (got {kind!r})")
        texts.append(part["text"])
    return "\n".join(texts), tuple(images)  # the same joining as vLLM, so prompts match between engines


_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)$", re.S)


def _parse_image(raw: object, param: str, part: str) -> ImageInput:
    """``{"url": "data:image/png;base64,..."}`` (decoded here) or an http(s) URL (fetched by the worker); errors
    name the message's ``content`` as ``param`` and the part in the message, as text-part errors do."""
    url = raw.get("url") if isinstance(raw, dict) else raw
    if not isinstance(url, str) or not url:
        raise _invalid(param, f"{part} must be an object with a 'url' (a data: or http(s) URL)")
    if url.startswith("data:"):
        match = _DATA_URL.match(url)
        if match is None:
            raise _invalid(param, f"{part}.url: a data URL must be base64 encoded (data:<type>;base64,...)")
        try:
            data = base64.b64decode(match["data"], validate=True)
        except ValueError:
            raise _invalid(param, f"{part}.url: the data URL's base64 payload is invalid") from None
        return ImageInput(data=data, media_type=match["type"] or "")
    if url.startswith(("http://", "https://")):
        return ImageInput(url=url)
    raise _invalid(param, f"{part}.url must be a data: or http(s) URL, not {url[:40]!r}")


def _parse_stream(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = False if body.get("stream") is None else body["stream"]
    if not isinstance(stream, bool):
        raise _invalid("stream", "'stream' must be a boolean")
    options = {} if body.get("stream_options") is None else body["stream_options"]
    if not isinstance(options, dict):
        raise _invalid("stream_options", "'stream_options' must be an object")
    include_usage = False if options.get("include_usage") is None else options["include_usage"]
    if not isinstance(include_usage, bool):
        raise _invalid("stream_options.include_usage", "'include_usage' must be a boolean")
    return stream, include_usage and stream


def _parse_stop(raw: object) -> tuple[str, ...]:
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise _invalid("stop", "'stop' must be a string or a list of strings")
    # An empty stop string would match at once and end every completion; it can only be a client slip.
    return tuple(s for s in items if s)


def _number(
    body: Mapping[str, Any], name: str, *, default: float, low: float, high: float, low_open: bool
) -> float:
    value = body.get(name)
    if value is None:
        return default
    valid = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not valid or value > high or (value <= low if low_open else value < low):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise _invalid(name, f"'{name}' must be a number in {interval}, got {value!r}")
    return float(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_JSON_TYPES = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string"}


def _json_type(value: object) -> str:
    """How a decoded JSON value is named in error messages."""
    return _JSON_TYPES.get(type(value), "an array" if isinstance(value, list) else "an object")
