"""Error handling shared by both apps: every failure becomes the OpenAI error envelope with a 4xx/5xx status.

``{"error": {"message", "type", "param", "code"}}`` is what the ``openai`` SDK parses, and ``xinfctl`` reads
the same shape from the control socket, so there is one error format for every client.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from xinfd.api.streaming import late_error
from xinfd.errors import ModelNotReadyError, ShuttingDownError, TooManyRequestsError, XinfdError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_body(message: str, *, error_type: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(exc: XinfdError) -> web.Response:
    headers = {}
    if isinstance(exc, ModelNotReadyError | TooManyRequestsError):  # 503 loading / 429 queue full (issue 4)
        headers["Retry-After"] = str(exc.retry_after)
    headers.update(getattr(exc, "headers", {}))  # e.g. WWW-Authenticate on a 401 (xinfd.api.security)
    body = error_body(exc.message, error_type=exc.error_type, code=exc.code, param=exc.param)
    return web.json_response(body, status=exc.status, headers=headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 400: "invalid_request"}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Convert typed errors, aiohttp HTTP errors and bugs to JSON; a bug never takes the daemon down."""
    try:
        return await handler(request)
    except XinfdError as exc:
        # After SSE keepalive pings the 200 is on the wire: the error can only go in-band (issue 6).
        late = await late_error(
            request, error_body(exc.message, error_type=exc.error_type, code=exc.code, param=exc.param)
        )
        return late if late is not None else error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 404:
            message = f"no route for {request.method} {request.path}"
        elif exc.status == 405:
            message = f"method {request.method} not allowed on {request.path}"
        return web.Response(
            status=exc.status,
            text=json.dumps(error_body(message, error_type=kind, code=code)),
            content_type="application/json",
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
        )
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        body = error_body(
            "internal error (see the daemon log)", error_type="server_error", code="internal_error"
        )
        late = await late_error(request, body)
        return late if late is not None else web.json_response(body, status=500)


# Open while draining: /health says "draining" (503) to load balancers, /metrics keeps scraping.
_DRAIN_EXEMPT = frozenset({"/health", "/metrics"})


def drain_middleware(state: Any) -> Middleware:
    """Count requests in flight and refuse new work with 503 once SIGTERM started the drain (issue 6).

    Counting here, around the whole handler, covers a request from its first byte to its stream's last, queued
    or not, so the daemon's shutdown can wait for exactly the requests that were accepted.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in _DRAIN_EXEMPT:
            return await handler(request)
        if state.draining:
            raise ShuttingDownError("xinfd is shutting down; retry on another instance")
        state.in_flight += 1
        try:
            return await handler(request)
        finally:
            state.in_flight -= 1

    return middleware
