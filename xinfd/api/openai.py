"""The public front end: OpenAI-compatible routes proxied to replicas, plus /health and /metrics.

The daemon checks the body with the worker's own validators (400 naming the field, no replica round trip;
``xinfd.api.streaming``), reads ``model`` to find the replicas, picks one, and relays the replica's answer byte
for byte. Streams are relayed chunk by chunk, with SSE keepalive pings while the replica is silent and a write
deadline for slow readers; when the client goes away the handler is cancelled, the upstream connection is
closed, and the replica aborts the sequence. Access checks and the drain run as middlewares (issue 6).
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
from prometheus_client.aiohttp import make_aiohttp_handler

from xinfd.api import images, xinference
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
# Connection-level failures that prove the request never reached the replica, so retrying elsewhere is safe.
_NOT_SENT = (
    aiohttp.ClientConnectorError,
    aiohttp.ServerDisconnectedError,
    FileNotFoundError,
    ConnectionRefusedError,
    aiohttp.ClientOSError,
)  # EPIPE/ECONNRESET before the replica answered anything (issue 4)


def make_api_app(state: DaemonState) -> web.Application:
    """Build the front-end app; tests call this directly with ``aiohttp_client``."""
    # Access checks run inside the error middleware (refusals become JSON envelopes) and before any handler,
    # for every path and method (issue 6); the policy follows state.settings across SIGHUP reloads.
    access = security_middleware(PolicyHolder(lambda: state.settings))
    # Xinference's ``detail`` is added to management errors inside the envelope middleware (xinfd.api.xinference).
    app = web.Application(
        middlewares=[error_middleware, xinference.detail_middleware, access, drain_middleware(state)],
        client_max_size=MAX_BODY_BYTES,
    )
    app[STATE] = state
    app.router.add_get("/health", health)
    install_readiness(app)  # GET /health/models/{uid} and the X-Xinfd-Host header (load balancers)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{uid}", get_model)
    # Management over HTTP (admin scope, xinfd.api.security): Xinference's REST API, and the control API for
    # a remote xinfctl under /control, both calling xinfd.api.management.
    xinference.add_routes(app)
    app.add_subapp(CONTROL_PREFIX, make_remote_control_app(state))
    for endpoint in ("chat/completions", "completions", "embeddings", "rerank"):
        app.router.add_post(f"/v1/{endpoint}", _proxy_route(endpoint))
    if state.settings.ui:  # the web console at /ui, a client of the routes above
        add_ui_routes(app)
    images.add_routes(app, proxy)  # /v1/images/generations through proxy(), and the url answers' files
    if not state.settings.disable_metrics:
        app.router.add_get("/metrics", make_aiohttp_handler(state.metrics.registry))
    return app


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
async def _lease(model: RunningModel, exclude: set[int]) -> AsyncIterator[Replica]:
    """A request slot on the least busy READY replica (issue 4): 503 while loading, 429 when the queue is full."""
    try:
        async with model.router.lease(lambda: model.replicas, lambda r: r.index in exclude) as replica:
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


async def proxy(request: web.Request, endpoint: str) -> web.StreamResponse:
    """Relay one inference request to the least busy READY replica of the requested model."""
    state = request.app[STATE]
    if state.draining:
        raise ShuttingDownError("xinfd is shutting down; retry on another instance")
    raw = await request.read()
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
    validate_request(
        request, endpoint, body
    )  # 400 naming the field, before any replica is involved (issue 6)
    if endpoint in ("chat/completions", "completions"):
        # Fields the replica's engine cannot honour are refused here, naming the engine (xinfd.request_features).
        supported = state.manager.plugins.request_features(model.engine)
        check_request_features(body, engine=model.engine, supported=supported)
    metrics = state.metrics
    started = time.monotonic()
    status = 500
    metrics.in_flight.labels(uid).inc()
    tried: set[int] = set()
    try:
        while True:
            async with queued_keepalive(
                request, _lease(model, tried)
            ) as replica:  # pings while queued (issue 6)
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
                    response = await _relay(request, replica, endpoint, forwarded, defaulted=defaulted)
                except _NOT_SENT as exc:
                    # The replica died between picking and sending: nothing was generated, so try another one.
                    log.warning(
                        "replica %s unreachable (%s); retrying on another replica", replica.label, exc
                    )
                    tried.add(replica.index)
                    if len(tried) >= len(model.replicas):
                        raise UpstreamError(f"no replica of {uid!r} could be reached: {exc}") from exc
                    continue
            status = response.status
            return response
    except asyncio.CancelledError:
        status = 499  # client closed the request
        metrics.aborts.labels(uid, "client_disconnect").inc()
        raise
    except XinfdError as exc:
        status = exc.status
        if status in (429, 503):  # capacity or state refusals (issue 6 metrics)
            metrics.rejections.labels(uid, str(status)).inc()
        raise
    finally:
        metrics.in_flight.labels(uid).dec()
        metrics.requests.labels(uid, endpoint, str(status)).inc()
        metrics.latency.labels(uid, endpoint).observe(time.monotonic() - started)


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
    """The replica had started answering when it failed: fail fast with a clear 502, no retry (issue 4)."""
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
    frame, and a client that stops reading is cut after the write deadline (issue 6)."""
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
