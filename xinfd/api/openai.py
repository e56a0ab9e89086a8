"""The public front end: OpenAI-compatible routes proxied to replicas, plus /health and /metrics.

The daemon checks the body with the worker's own validators (400 naming the field, no replica round trip;
``xinfd.api.streaming``), reads ``model`` to find the replicas, picks one, and relays the replica's answer byte
for byte. Streams are relayed chunk by chunk, with SSE keepalive pings while the replica is silent and a write
deadline for slow readers; when the client goes away the handler is cancelled, the upstream connection is
closed, and the replica aborts the sequence. Access checks and the drain run as middlewares.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from xinfd.api import exposition, images, xinference
from xinfd.api.bodies import read_body
from xinfd.api.browser import BrowserPolicyHolder, add_cors_headers, browser_middleware, json_body_middleware
from xinfd.api.control import CONTROL_PREFIX, make_remote_control_app
from xinfd.api.metrics import StreamStats
from xinfd.api.middleware import drain_middleware, error_middleware
from xinfd.api.readiness import daemon_name, install_readiness
from xinfd.api.request_policy import DEFAULTED_LIMIT_HEADER, default_budget, forwarded_body, sets_no_limit
from xinfd.api.security import PolicyHolder, security_middleware
from xinfd.api.state import STATE, DaemonState
from xinfd.api.streaming import (
    STARTED_KEY,
    STREAM_KEY,
    SlowReaderError,
    SseRelay,
    queued_keepalive,
    validate_request,
)
from xinfd.api.ui import add_ui_routes
from xinfd.errors import (
    InvalidRequestError,
    ModelNotReadyError,
    ShuttingDownError,
    TooManyRequestsError,
    UnknownModelError,
    UpstreamError,
    XinfdError,
)
from xinfd.http_errors import error_body, parse_json_object
from xinfd.replicas import Replica
from xinfd.request_features import check_request_features
from xinfd.router import NoReadyReplica, QueueFull
from xinfd.supervisor import RunningModel

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
REPLICA_HEADER = "X-Xinfd-Replica"
BODY_KEY = web.RequestKey("xinfd_body", tuple)  # (raw bytes, parsed object) of a proxied request
COUNTED_KEY = web.RequestKey("xinfd_counted", bool)  # the proxy counted this request in xinfd_requests
_PROXIED = ("chat/completions", "completions", "embeddings", "rerank")
# Connection-level failures that prove the request never reached the replica, so retrying elsewhere is safe.
_NOT_SENT = (
    aiohttp.ClientConnectorError,
    aiohttp.ServerDisconnectedError,
    FileNotFoundError,
    ConnectionRefusedError,
    aiohttp.ClientOSError,
)  # EPIPE/ECONNRESET before the replica answered anything


def make_api_app(state: DaemonState) -> web.Application:
    """Build the front-end app; tests call this directly with ``aiohttp_client``."""
    # Access checks run inside the error middleware (refusals become JSON envelopes) and before any handler,
    # for every path and method; the policy follows state.settings across SIGHUP reloads.
    access = security_middleware(PolicyHolder(lambda: state.settings))
    # Host, Origin and Content-Type checks come first: a DNS-rebound or cross-origin page is refused before
    # anything else, and CORS preflights (which carry no key) are answered before the key check. Xinference's
    # ``detail`` is added to management errors inside the envelope middleware (xinfd.api.xinference).
    browser = browser_middleware(BrowserPolicyHolder(lambda: state.settings))
    app = web.Application(
        middlewares=[
            _count_refusals,
            error_middleware,
            xinference.detail_middleware,
            browser,
            access,
            json_body_middleware,
            drain_middleware(state),
        ],
        client_max_size=MAX_BODY_BYTES,
    )
    app.on_response_prepare.append(add_cors_headers)
    app[STATE] = state
    app.router.add_get("/health", health)
    install_readiness(app)  # GET /health/models/{uid} and the X-Xinfd-Host header (load balancers)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{uid}", get_model)
    # Management over HTTP (admin scope, xinfd.api.security): Xinference's REST API, and the control API for
    # a remote xinfctl under /control, both calling xinfd.api.management.
    xinference.add_routes(app)
    app.add_subapp(CONTROL_PREFIX, make_remote_control_app(state))
    for endpoint in _PROXIED:
        app.router.add_post(f"/v1/{endpoint}", _proxy_route(endpoint))
    if state.settings.ui:  # the web console at /ui, a client of the routes above
        add_ui_routes(app)
    images.add_routes(app, proxy)  # /v1/images/generations through proxy(), and the url answers' files
    if not state.settings.disable_metrics:
        app.router.add_get("/metrics", exposition.make_handler(state.metrics.registry))
    return app


@web.middleware
async def _count_refusals(request: web.Request, handler: Any) -> web.StreamResponse:
    """Count inference requests that middlewares refused before the proxy saw them (421, 403, 401, 415, 503),
    so ``xinfd_requests`` has every answered status; the proxy counts the others itself."""
    response: web.StreamResponse = await handler(request)
    endpoint = request.path.removeprefix("/v1/")
    if endpoint in _PROXIED and not request.get(COUNTED_KEY, False):
        request.app[STATE].metrics.requests.labels("", endpoint, str(response.status)).inc()
    return response


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.draining or state.withdrawn:  # readiness goes first on SIGTERM (xinfd.lifecycle)
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response(
        {"status": "ok", "models": len(state.manager.models), "host": daemon_name(state.settings)}
    )


async def list_models(request: web.Request) -> web.Response:
    """OpenAI's model list, each item also in Xinference's describe shape (one list for both clients)."""
    state = request.app[STATE]
    return web.json_response({"object": "list", "data": [xinference.card(state, m)
                                                          for m in state.manager.models.values()]})


async def get_model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(xinference.card(state, state.manager.get(request.match_info["uid"])))


def _proxy_route(endpoint: str) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await proxy(request, endpoint)

    handler.__name__ = f"proxy_{endpoint.replace('/', '_')}"
    return handler


@contextlib.asynccontextmanager
async def _lease(model: RunningModel, tried: set[tuple[int, int | None]], wait: float) -> AsyncIterator[Replica]:
    """A request slot on the least busy READY replica: 503 while loading, 429 when the queue is full.

    ``tried`` holds the (index, pid) of replicas this request could not reach: the same process is not tried
    again, but once it restarted (a new pid) it is eligible again. With no READY replica the request waits up to
    ``wait`` seconds for one to come back.
    """
    if model.state in ("LAUNCHING", "FAILED"):
        wait = 0.0  # nothing is restarting: answer 503 at once
    try:
        async with model.router.lease(
            lambda: model.replicas, lambda r: (r.index, r.pid) in tried, wait_ready=wait
        ) as replica:
            yield replica
    except NoReadyReplica:
        if model.state == "LAUNCHING":
            raise ModelNotReadyError(f"model {model.uid!r} is still loading", retry_after=2) from None
        raise ModelNotReadyError(
            f"model {model.uid!r} has no ready replica (state {model.state})", retry_after=5
        ) from None
    except QueueFull:
        raise TooManyRequestsError(
            f"model {model.uid!r} is at capacity ({len(model.replicas)} replica(s) x "
            f"{model.router.max_concurrency} concurrent, {model.router.max_queue} queued); retry later",
            retry_after=1,
        ) from None


def _admit_before_body(state: DaemonState) -> None:
    """Refuse before the body is read when every running model is at capacity (429), so a refused request
    never costs its body (up to ``MAX_BODY_BYTES``) in memory. The model is named inside the body, so this is
    the daemon-wide bound: requests held at once <= the sum of every model's slots and queue."""
    capacity = state.manager.capacity()
    if capacity is not None and state.proxying >= capacity:
        raise TooManyRequestsError(
            f"every model is at capacity ({state.proxying} requests in progress or queued); retry later",
            retry_after=1,
        )


async def proxy(request: web.Request, endpoint: str) -> web.StreamResponse:
    """Relay one inference request to the least busy READY replica of the requested model.

    Every answer is counted in ``xinfd_requests`` (refusals before a model is known under model ``""``).
    """
    state = request.app[STATE]
    metrics = state.metrics
    started = time.monotonic()
    status = 500
    uid = ""  # the metrics label until the request names a running model (never a client-chosen string)
    request[COUNTED_KEY] = True
    try:
        if state.draining:
            raise ShuttingDownError("xinfd is shutting down; retry on another instance")
        _admit_before_body(state)
        state.proxying += 1
        try:
            model = await _resolve(request, endpoint, state)
            uid = model.uid
            metrics.in_flight.labels(uid).inc()
            try:
                response = await _serve(request, endpoint, state, model)
            finally:
                metrics.in_flight.labels(uid).dec()
        finally:
            state.proxying -= 1
        status = response.status
        return response
    except asyncio.CancelledError:
        status = 499  # client closed the request
        if uid:
            metrics.aborts.labels(uid, "client_disconnect").inc()
        raise
    except XinfdError as exc:
        status = exc.status
        if status in (429, 503):  # capacity or state refusals
            metrics.rejections.labels(uid, str(status)).inc()
        raise
    except web.HTTPException as exc:  # 413 from the body limit
        status = exc.status
        raise
    finally:
        metrics.requests.labels(uid, endpoint, str(status)).inc()
        metrics.latency.labels(uid, endpoint).observe(time.monotonic() - started)


async def _resolve(request: web.Request, endpoint: str, state: DaemonState) -> RunningModel:
    """Read and check the body (400 naming the field), and find the model it names (404)."""
    raw = await read_body(request, timeout=state.settings.request_body_timeout, max_size=MAX_BODY_BYTES)
    body = parse_json_object(raw)
    uid = body.get("model")
    if not isinstance(uid, str) or not uid:
        raise InvalidRequestError(
            "'model' is required (a launched model uid; see GET /v1/models)", param="model"
        )
    try:
        model = state.manager.get(uid)
    except UnknownModelError as exc:
        exc.param = "model"
        raise
    validate_request(request, endpoint, body)  # 400 naming the field, before any replica is involved
    if endpoint in ("chat/completions", "completions") and model.engine in state.manager.plugins.engines:
        # Fields the replica's engine cannot honour are refused here, naming the engine (xinfd.request_features).
        # A restored model waiting for its GPU has no engine yet: the lease answers it with 503 + Retry-After.
        supported = state.manager.plugins.request_features(model.engine)
        check_request_features(body, engine=model.engine, supported=supported)
    request[BODY_KEY] = (raw, body)
    return model


async def _serve(request: web.Request, endpoint: str, state: DaemonState, model: RunningModel) -> web.StreamResponse:
    raw, body = request[BODY_KEY]
    tried: set[tuple[int, int | None]] = set()
    wait = state.settings.replica_wait_timeout  # read per request: SIGHUP applies at once
    while True:
        async with queued_keepalive(request, _lease(model, tried, wait)) as replica:  # pings while queued
            try:
                cap = state.settings.max_tokens  # read per request: SIGHUP applies at once
                forwarded = forwarded_body(
                    raw,
                    body,
                    endpoint,
                    max_tokens=cap,
                    chat_template_kwargs=replica.spec.chat_template_kwargs if replica.spec else {},
                    default_max_tokens=default_budget(
                        family=model.spec.default_max_tokens,
                        daemon=state.settings.default_max_tokens,
                        context_length=model.spec.context_length,
                        cap=cap,
                    ),
                    sampling=model.spec.sampling,
                )
                defaulted = sets_no_limit(body, endpoint)
                return await _relay(request, replica, endpoint, forwarded, defaulted=defaulted)
            except _NOT_SENT as exc:
                # The replica died between picking and sending: nothing was generated, so try another one, or
                # this one once it restarted. The cause (a socket path) goes to the log, not to the client.
                log.warning("replica %s unreachable (%s); retrying", replica.label, exc)
                tried.add((replica.index, replica.pid))


async def _relay(
    request: web.Request, replica: Replica, endpoint: str, raw: bytes, *, defaulted: bool = False
) -> web.StreamResponse:
    try:  # the router's lease counts the request as outstanding
        url = f"{replica.base_url}{replica.api_prefix}/{endpoint}"
        headers = {"Content-Type": "application/json"}
        if defaulted:  # the body's max_tokens is the daemon's default: the worker host fits it to the prompt
            headers[DEFAULTED_LIMIT_HEADER] = "1"
        out_headers = {REPLICA_HEADER: replica.label}
        if request.get(STREAM_KEY, False):
            settings = request.app[STATE].settings
            relay = SseRelay.for_request(
                request,
                headers=out_headers,
                ping_interval=settings.sse_ping_attempts_seconds,
                write_timeout=settings.stream_write_timeout,
            )
            # Pings cover the silence before the replica's first byte (prefill); see xinfd.api.streaming.
            async with await relay.wait(replica.session().post(url, data=raw, headers=headers)) as upstream:
                if relay.prepared or "text/event-stream" in upstream.headers.get("Content-Type", ""):
                    stats = StreamStats(
                        request.app[STATE].metrics,
                        replica.model_uid,
                        endpoint,
                        started=request.get(STARTED_KEY, time.monotonic()),
                    )
                    return await _relay_stream(relay, upstream, replica, stats)
                data = await upstream.read()
                return web.Response(
                    status=upstream.status,
                    body=data,
                    content_type=upstream.content_type or "application/json",
                    headers=out_headers,
                )
        async with replica.session().post(url, data=raw, headers=headers) as upstream:
            data = xinference.with_detail(request.path, upstream.status, await _read_answer(upstream, replica))
            if upstream.status == 200:
                request.app[STATE].metrics.usage(replica.model_uid, data)
            return web.Response(
                status=upstream.status,
                body=data,
                content_type=upstream.content_type or "application/json",
                headers=out_headers,
            )
    finally:
        replica.served += 1


async def _read_answer(upstream: aiohttp.ClientResponse, replica: Replica) -> bytes:
    """The replica had started answering when it failed: fail fast with a clear 502, no retry."""
    try:
        return await upstream.read()
    except aiohttp.ClientError as exc:
        raise UpstreamError(
            f"replica {replica.label} failed while answering: {exc or type(exc).__name__}"
        ) from exc


async def _relay_stream(
    relay: SseRelay, upstream: aiohttp.ClientResponse, replica: Replica, stats: StreamStats
) -> web.StreamResponse:
    """Relay SSE chunk by chunk, pinging while the replica is silent; every stream ends with [DONE] or an error
    frame, and a client that stops reading is cut after the write deadline."""
    try:
        if upstream.status != 200 or "text/event-stream" not in upstream.headers.get("Content-Type", ""):
            # Already pinged, so the 200 is out: the replica's late refusal goes in-band.
            detail = (await upstream.read()).decode(errors="replace")
            try:
                envelope = json.loads(detail)
            except ValueError:
                envelope = error_body(
                    f"replica answered {upstream.status}: {detail[:200]}",
                    error_type="server_error",
                    code="upstream_error",
                )
            await relay.error_frame(envelope)
        else:
            while chunk := await relay.read(upstream.content):
                stats.chunk(chunk, time.monotonic())
                await relay.write(chunk)
            stats.finish()
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        # The replica died mid-stream: tell the client in-band and close, never leave it hanging.
        log.warning("replica %s failed mid-stream: %s", replica.label, exc)
        stats.abort("upstream_error")
        frame = error_body(
            f"replica {replica.label} failed mid-stream", error_type="server_error", code="upstream_error"
        )
        with contextlib.suppress(ConnectionError):
            await relay.error_frame(frame)
    except SlowReaderError as exc:
        stats.abort("slow_reader")
        relay.cut(str(exc))  # leaving the upstream context closes it: the replica aborts the sequence
        return relay.response
    except ConnectionResetError as exc:
        # The client went away while we wrote (rather than while we waited): the same as a cancelled handler,
        # so it is counted once, as a disconnect (499), by the caller.
        stats.finish()
        raise asyncio.CancelledError from exc
    with contextlib.suppress(ConnectionError):
        await relay.response.write_eof()
    return relay.response
