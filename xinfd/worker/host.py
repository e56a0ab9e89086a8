"""The worker host: serves an engine's model object over OpenAI-compatible HTTP on a Unix socket.

Engines only provide a small model object (``TextModel`` / ``EmbeddingModel`` from ``xinfd.types``); this
module owns HTTP, streaming, request ids, aborts and cancellation, so no engine re-implements them.
Validation and response bodies live in ``xinfd.worker.protocol`` (aiohttp-free); this is the glue.

Routes: ``GET /health`` (with the imported library versions), ``GET /info`` (those versions, the files they were
loaded from and the process id), ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``,
``POST /v1/embeddings``, ``POST /v1/rerank``, ``POST /v1/images/generations``
(``xinfd.worker.image_generation``), ``POST /abort/{request_id}``. A route whose ability the model lacks answers
404.

Over 400 lines (about 530): HTTP glue for every endpoint the worker serves (chat, completions, embeddings,
rerank, images, abort, health); the per-endpoint handlers are the next split (rerank and image generation
already live in their own modules), kept here for now because they share the request context and streaming
helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from xinfd import logprobs as logprobs_format
from xinfd import rerank_protocol
from xinfd.errors import InvalidRequestError, PluginError, ShuttingDownError, UnsupportedEndpointError, XinfdError
from xinfd.http_errors import exception_body, make_error_middleware, parse_json_object
from xinfd.request_features import check_request_features
from xinfd.sampling_defaults import DEFAULTED_LIMIT_HEADER, with_model_defaults
from xinfd.types import (
    EmbeddingModel,
    GeneratedDelta,
    GenerateRequest,
    ImageModel,
    RerankModel,
    TextModel,
    TokenLogprob,
)
from xinfd.worker import images as image_parts
from xinfd.worker import protocol
from xinfd.worker.libraries import imported_libraries, module_files
from xinfd.worker.protocol import CompletionFormat, CompletionKind, GenerationRequest, Usage
from xinfd.worker.sse import CompletionStream

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Xinfd-Request-Id"
REPLICA_HEADER = "X-Xinfd-Replica"
# Long-context prompts and embedding batches exceed aiohttp's 1 MiB default body limit.
MAX_BODY_BYTES = 64 * 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig:
    """What the routes need to know about the served model."""

    model_uid: str
    model_name: str
    context_length: int
    max_tokens_cap: int | None
    replica_label: str
    created: int
    # The engine's name and the optional request fields it honours (``Engine.request_features``), for the 400
    # that refuses the others; ``None`` checks nothing.
    engine: str = ""
    request_features: frozenset[str] | None = frozenset()
    # The family's default_max_tokens, for a request without a limit that did not come through the daemon.
    default_max_tokens: int | None = None


class InFlight:
    """Generations in progress by request id, so ``/abort`` and shutdown can stop them.

    An abort cancels the handler's task; the handler recognises that cancellation (``absorb_abort``) and ends
    the response normally with ``finish_reason="abort"`` instead of dropping the connection.
    """

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[object]] = {}
        self._aborted: set[str] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, request_id: str, task: asyncio.Task[object]) -> None:
        if request_id in self._tasks:
            raise InvalidRequestError(f"request id {request_id!r} is already running")
        self._tasks[request_id] = task

    def finish(self, request_id: str) -> None:
        self._tasks.pop(request_id, None)
        self._aborted.discard(request_id)

    def abort(self, request_id: str) -> bool:
        """Cancel a running generation; ``False`` if no generation has that id (finished or never started)."""
        task = self._tasks.get(request_id)
        if task is None:
            return False
        if request_id not in self._aborted:  # a second cancel would turn the clean ending into a dropped one
            self._aborted.add(request_id)
            task.cancel()
        return True

    def abort_all(self) -> int:
        return sum(self.abort(request_id) for request_id in list(self._tasks))

    def absorb_abort(self, request_id: str) -> bool:
        """Called while handling ``CancelledError``: ``True`` (and the cancellation is undone) if it came only
        from ``abort``; ``False`` if something else (client gone, shutdown timeout) cancelled the task too."""
        task = self._tasks.get(request_id)
        if request_id not in self._aborted or task is None or task.cancelling() != 1:
            return False
        task.uncancel()
        return True


CONFIG_KEY = web.AppKey("xinfd_worker_config", WorkerConfig)
INFLIGHT_KEY = web.AppKey("xinfd_worker_inflight", InFlight)
# Protocols are not concrete classes, so these keys are typed by subscription rather than by a ``t`` argument.
TEXT_MODEL_KEY = web.AppKey[TextModel]("xinfd_worker_text_model")
EMBEDDING_MODEL_KEY = web.AppKey[EmbeddingModel]("xinfd_worker_embedding_model")
RERANK_MODEL_KEY = web.AppKey[RerankModel]("xinfd_worker_rerank_model")
REQUEST_ID_KEY = web.RequestKey("xinfd_request_id", str)


def make_worker_app(
    model: object,
    *,
    model_uid: str,
    model_name: str,
    context_length: int,
    max_tokens_cap: int | None,
    replica_label: str,
    engine: str = "",
    request_features: frozenset[str] | None = frozenset(),
    default_max_tokens: int | None = None,
) -> web.Application:
    """Build the replica's HTTP app around a loaded model object.

    ``engine`` and ``request_features`` (``Engine.request_features``) decide which optional request fields are
    honoured; the others are refused with a 400 naming the field and the engine.

    :raises TypeError: if ``model`` implements none of ``TextModel``, ``EmbeddingModel``, ``RerankModel`` and
        ``ImageModel``.
    """
    from xinfd.worker.image_generation import add_image_routes  # it imports this module's keys

    text = model if isinstance(model, TextModel) else None
    embedder = model if isinstance(model, EmbeddingModel) else None
    reranker = model if isinstance(model, RerankModel) else None
    image = model if isinstance(model, ImageModel) else None
    if text is None and embedder is None and reranker is None and image is None:
        raise TypeError(
            f"{type(model).__name__} implements none of TextModel, EmbeddingModel, RerankModel and ImageModel"
        )
    served = text if text is not None else embedder if embedder is not None else reranker
    window = served.context_window if served is not None else None
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise TypeError(f"{type(model).__name__}.context_window must be a positive int or None, got {window!r}")
        # The engine was loaded with less context than the family allows; a larger window changes nothing,
        # since prompts beyond the family's context_length are not the model's to take.
        context_length = min(context_length, window)
    app = web.Application(middlewares=[_request_context, _error_middleware], client_max_size=MAX_BODY_BYTES)
    app[CONFIG_KEY] = WorkerConfig(
        model_uid=model_uid,
        model_name=model_name,
        context_length=context_length,
        max_tokens_cap=max_tokens_cap,
        replica_label=replica_label,
        created=int(time.time()),
        engine=engine,
        request_features=request_features,
        default_max_tokens=default_max_tokens,
    )
    app[INFLIGHT_KEY] = InFlight()
    app.on_response_prepare.append(_stamp_headers)
    app.on_shutdown.append(_abort_in_flight)
    app.on_cleanup.append(_closer(model))
    app.router.add_get("/health", _health)
    app.router.add_get("/info", _info)
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/abort/{request_id}", _abort)
    if text is not None:
        app[TEXT_MODEL_KEY] = text
    if embedder is not None:
        app[EMBEDDING_MODEL_KEY] = embedder
    # Every OpenAI route exists; one the model cannot serve answers 404 with a message saying why.
    for path, handler in (("/v1/chat/completions", _chat_completions), ("/v1/completions", _completions)):
        app.router.add_post(path, handler if text is not None else _unsupported("text generation"))
    app.router.add_post("/v1/embeddings", _embeddings if embedder is not None else _unsupported("embeddings"))
    add_image_routes(app, image)
    if reranker is not None:
        app[RERANK_MODEL_KEY] = reranker
    app.router.add_post("/v1/rerank", _rerank if reranker is not None else _unsupported("rerank"))
    return app


async def serve(
    app: web.Application,
    socket_path: str,
    *,
    stop_signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    shutdown_timeout: float = 2.0,
) -> None:
    """Serve ``app`` on a Unix socket until one of ``stop_signals`` arrives or the task is cancelled.

    On stop: the socket stops accepting, running generations are aborted (clients get
    ``finish_reason="abort"``), handlers get ``shutdown_timeout`` seconds to finish, and the socket file is
    removed. A signal whose disposition is ``SIG_IGN`` when serving starts stays ignored (the ``nohup``
    convention), so an engine can opt out of SIGTERM and the daemon's SIGKILL escalation is what stops it.
    """
    path = Path(socket_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket from a crashed predecessor would make bind() fail
    # handler_cancellation: a client that disconnects cancels its handler, which closes the engine's iterator.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    try:
        await web.UnixSite(runner, str(path)).start()
        os.chmod(path, 0o600)  # only the daemon's user may talk to the replica (it bypasses API keys)
        for sig in stop_signals:
            if signal.getsignal(sig) == signal.SIG_IGN:
                log.info("%s is ignored by this process; it will not stop the worker", sig.name)
                continue
            loop.add_signal_handler(sig, _request_stop, stop, sig)
            installed.append(sig)
        log.info("serving %s on %s", app[CONFIG_KEY].model_uid, path)
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        log.info("worker stopped")


def _request_stop(stop: asyncio.Event, sig: signal.Signals) -> None:
    # Signal handlers only record the request; serve() does the shutdown in the loop.
    log.info("received %s, shutting down", sig.name)
    stop.set()


# -- middleware and signals ----------------------------------------------------------------------------------


@web.middleware
async def _request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give each request an id (outside the error middleware, so its log lines and headers carry it)."""
    # The daemon passes its own id so that it can abort the request on this replica by that id.
    supplied = request.headers.get(REQUEST_ID_HEADER, "")
    request[REQUEST_ID_KEY] = (
        supplied if protocol.is_valid_request_id(supplied) else protocol.new_request_id()
    )
    return await handler(request)


def _describe(request: web.Request) -> str:
    return f"{request.get(REQUEST_ID_KEY, '-')} {request.method} {request.path}"


# Every error in OpenAI's envelope, the same as the daemon's (xinfd.http_errors). No ``late`` handler: a
# stream that started reports its failure itself (``CompletionStream.fail`` in ``_complete``).
_error_middleware = make_error_middleware(internal_message="internal error in the model worker", describe=_describe)


async def _stamp_headers(request: web.Request, response: web.StreamResponse) -> None:
    if REQUEST_ID_KEY in request:
        response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID_KEY]
    response.headers[REPLICA_HEADER] = request.app[CONFIG_KEY].replica_label


# How long a model's ``close()`` may take at stop; the daemon's SIGKILL after its grace period is the backstop.
_CLOSE_TIMEOUT_S = 10.0


def _closer(model: object) -> Callable[[web.Application], Awaitable[None]]:
    """The cleanup step that calls the model's optional ``close()`` (see ``xinfd.types.LoadedModel``) off the loop,
    after the handlers finished: an engine's batching thread then stops cleanly instead of dying inside torch
    when the interpreter exits (which aborts the replica: exit status -6 on every stop)."""

    async def close(app: web.Application) -> None:
        method = getattr(model, "close", None)
        if not callable(method):
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(method), timeout=_CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("the model's close() did not return within %gs", _CLOSE_TIMEOUT_S)
        except Exception:
            log.warning("the model's close() failed", exc_info=True)

    return close


async def _abort_in_flight(app: web.Application) -> None:
    count = app[INFLIGHT_KEY].abort_all()
    if count:
        log.info("aborted %d running request(s) for shutdown", count)


# -- routes --------------------------------------------------------------------------------------------------


async def _health(request: web.Request) -> web.Response:
    # The socket only listens once the model is loaded, so answering at all means ready.
    # ``libraries``: what this replica imported (the daemon shows it in ``xinfctl list`` and ``/v1/models``).
    return web.json_response({"status": "ok", "libraries": imported_libraries()})


async def _info(request: web.Request) -> web.Response:
    """Seen from inside the replica: library versions, the files those modules came from, the process id."""
    return web.json_response(
        {"pid": os.getpid(), "libraries": imported_libraries(), "module_files": module_files()}
    )


async def _models(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG_KEY]
    card = {"id": cfg.model_uid, "object": "model", "created": cfg.created, "owned_by": "xinfd"}
    card.update(root=cfg.model_name, max_model_len=cfg.context_length)  # as vLLM reports them
    return web.json_response({"object": "list", "data": [card]})


async def _abort(request: web.Request) -> web.Response:
    request_id = request.match_info["request_id"]
    aborted = request.app[INFLIGHT_KEY].abort(request_id)
    log.info("abort %s: %s", request_id, "cancelled" if aborted else "not running")
    return web.json_response({"aborted": aborted})


def _unsupported(ability: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        uid = request.app[CONFIG_KEY].model_uid
        raise UnsupportedEndpointError(f"model {uid!r} does not support {ability} ({request.path})")

    return handler


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    model = request.app[TEXT_MODEL_KEY]
    body = parse_json_object(await request.read())
    _check_features(request, body)
    chat = protocol.parse_chat_request(body)
    images: tuple[bytes, ...] = ()
    if image_parts.has_images(list(chat.messages)):
        if not getattr(model, "accepts_images", False):
            uid = request.app[CONFIG_KEY].model_uid
            raise InvalidRequestError(f"model {uid!r} does not accept image input", param="messages")
        images = await image_parts.image_bytes(list(chat.messages))
    prompt = model.render_chat(list(chat.messages), chat.template_options)
    return await _complete(request, model, "chat", prompt, chat, images=images)


async def _completions(request: web.Request) -> web.StreamResponse:
    model = request.app[TEXT_MODEL_KEY]
    body = parse_json_object(await request.read())
    _check_features(request, body)
    completion = protocol.parse_completion_request(body)
    return await _complete(request, model, "completion", completion.prompt, completion)


def _check_features(request: web.Request, body: Mapping[str, Any]) -> None:
    cfg = request.app[CONFIG_KEY]
    check_request_features(body, engine=cfg.engine or "this engine", supported=cfg.request_features)


async def _embeddings(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG_KEY]
    model = request.app[EMBEDDING_MODEL_KEY]
    req = protocol.parse_embedding_request(parse_json_object(await request.read()))
    counts = [model.count_tokens(text) for text in req.texts]
    protocol.check_context(counts, context_length=cfg.context_length, param="input")
    vectors = await model.embed(list(req.texts))
    if len(vectors) != len(req.texts):
        raise PluginError(f"the engine returned {len(vectors)} embeddings for {len(req.texts)} inputs")
    body = protocol.embeddings_body(
        vectors, model=cfg.model_uid, prompt_tokens=sum(counts), encoding_format=req.encoding_format
    )
    return web.json_response(body)


async def _rerank(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG_KEY]
    model = request.app[RERANK_MODEL_KEY]
    req = rerank_protocol.parse_rerank_request(parse_json_object(await request.read()))
    counts = [model.count_pair_tokens(req.query, document) for document in req.documents]
    rerank_protocol.check_pair_lengths(counts, context_length=cfg.context_length)
    scores = await model.rerank(req.query, list(req.documents))
    if len(scores) != len(req.documents):
        raise PluginError(f"the engine returned {len(scores)} scores for {len(req.documents)} documents")
    body = rerank_protocol.rerank_body(
        req, scores, response_id=request[REQUEST_ID_KEY], model=cfg.model_uid, input_tokens=sum(counts)
    )
    return web.json_response(body)


# -- generation ----------------------------------------------------------------------------------------------


async def _complete(
    request: web.Request,
    model: TextModel,
    kind: CompletionKind,
    prompt: str,
    parsed: GenerationRequest,
    *,
    images: tuple[bytes, ...] = (),
) -> web.StreamResponse:
    """Run one generation and answer it whole or as an SSE stream."""
    cfg = request.app[CONFIG_KEY]
    request_id = request[REQUEST_ID_KEY]
    sampling = parsed.sampling
    prompt_tokens = model.count_tokens(prompt)
    max_tokens = protocol.resolve_max_tokens(
        sampling,
        prompt_tokens=prompt_tokens,
        context_length=cfg.context_length,
        cap=cfg.max_tokens_cap,
        prompt_param="messages" if kind == "chat" else "prompt",
        default=cfg.default_max_tokens,
        fit_to_room=request.headers.get(DEFAULTED_LIMIT_HEADER) == "1",
    )
    sampling = with_model_defaults(sampling, getattr(model, "sampling_defaults", None))
    generate = GenerateRequest(
        request_id=request_id,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        stop=sampling.stop,
        seed=sampling.seed,
        kind=kind,  # engines split <think> reasoning only out of chat answers
        images=images,
        logprobs=parsed.logprobs,
        top_k=sampling.top_k,
        repetition_penalty=sampling.repetition_penalty,
        streamed=parsed.stream,
    )
    fmt = CompletionFormat.new(kind, request_id, cfg.model_uid, parsed.include_usage)
    stream = CompletionStream(request, fmt) if parsed.stream else None
    started = time.monotonic()
    try:
        collected: list[TokenLogprob] | None = [] if parsed.logprobs is not None else None
        text, finish_reason, reasoning, counted = await _drain(
            request, model.generate(generate), stream, collected, kind
        )
    except asyncio.CancelledError:
        # aiohttp cancels the handler when the client (the daemon) disconnects; _drain closed the generator.
        log.info(
            "%s: client disconnected, generation cancelled after %.3fs",
            request_id,
            time.monotonic() - started,
        )
        raise
    except Exception as exc:
        if stream is None or not stream.started:
            raise  # nothing sent yet: the middleware answers with a proper status
        if isinstance(exc, ConnectionError):
            # The client went away; aiohttp ignores the connection error when it finishes the response.
            log.info("%s: client disconnected", request_id)
            return stream.response
        log.exception("%s: generation failed mid-stream", request_id)
        if not isinstance(exc, XinfdError):
            exc = XinfdError("the engine failed while generating")
        return await stream.fail(exception_body(exc))
    generated = counted if counted is not None else sum(
        model.count_tokens(part) for part in (reasoning, text) if part)
    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=generated)
    log.info("%s %s %s finish=%s %.3fs", request_id, kind, usage, finish_reason, time.monotonic() - started)
    if stream is None:
        shaped = None
        if collected is not None:
            shaped = (logprobs_format.chat_logprobs(collected) if kind == "chat"
                      else logprobs_format.completion_logprobs(collected))
        return web.json_response(fmt.full(text, finish_reason, usage, reasoning=reasoning, logprobs=shaped))
    if finish_reason == "abort":
        # Aborted (the replica is stopping, or /abort): "abort" is not an OpenAI finish reason, so a stream ends
        # with an error frame and no [DONE]; clients see it was cut instead of a seemingly complete answer.
        aborted = ShuttingDownError("the generation was aborted: the replica stopped serving it")
        return await stream.fail(exception_body(aborted))
    return await stream.finish(finish_reason, usage)


async def _drain(
    request: web.Request,
    deltas: AsyncIterator[GeneratedDelta],
    stream: CompletionStream | None,
    collected: list[TokenLogprob] | None = None,
    kind: CompletionKind = "chat",
) -> tuple[str, str, str, int | None]:
    """Consume the engine's deltas up to the first finish reason; return the text, that reason, the
    reasoning text (``GeneratedDelta.reasoning``, sent as ``reasoning_content``) and the engine's last token
    count (``GeneratedDelta.tokens``; None if it reports none).

    The iterator is always closed (``aclose``) on the way out, so an engine stops generating when the client
    disconnects, the request is aborted, or sending fails. A cancellation caused only by ``/abort`` is
    absorbed and reported as ``finish_reason="abort"``. With ``collected`` (the request asked for logprobs),
    each delta's ``logprobs`` are appended to it and streamed with the delta's text, in ``kind``'s shape.
    """
    inflight = request.app[INFLIGHT_KEY]
    request_id = request[REQUEST_ID_KEY]
    task = asyncio.current_task()
    assert task is not None  # aiohttp runs every handler in a task
    inflight.start(request_id, task)
    parts: list[str] = []
    thoughts: list[str] = []
    finish_reason = "stop"  # an engine whose iterator just ends has finished naturally
    counted: int | None = None
    try:
        async for delta in deltas:
            if delta.tokens is not None:
                counted = delta.tokens
            if delta.reasoning:
                thoughts.append(delta.reasoning)
                if stream is not None:
                    await stream.delta("", reasoning=delta.reasoning)
            shaped = None
            if collected is not None and delta.logprobs:
                shaped = (logprobs_format.chat_logprobs(delta.logprobs) if kind == "chat" else
                          logprobs_format.completion_logprobs(delta.logprobs, offset=sum(len(p) for p in parts)))
                collected.extend(delta.logprobs)
            if delta.text or shaped is not None:
                parts.append(delta.text)
                if stream is not None:
                    await stream.delta(delta.text, logprobs=shaped)
            if delta.finish_reason:
                finish_reason = delta.finish_reason
                break
    except asyncio.CancelledError:
        if not inflight.absorb_abort(request_id):
            raise
        finish_reason = "abort"
    finally:
        # Unregister before any await: a late /abort must not cancel the writing of the response's tail.
        inflight.finish(request_id)
        aclose = getattr(deltas, "aclose", None)
        if aclose is not None:
            await aclose()
    return "".join(parts), finish_reason, "".join(thoughts), counted
