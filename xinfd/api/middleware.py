"""The daemon's middlewares: errors (the shared envelope of ``xinfd.http_errors``) and the drain.

Both apps (front end and control socket) use ``error_middleware``; its only daemon-specific part is
``late_error``: after SSE keepalive pings the 200 is on the wire, so an error can only go in-band.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from xinfd.api.readiness import is_model_readiness_path
from xinfd.api.streaming import late_error
from xinfd.errors import ShuttingDownError
from xinfd.http_errors import Handler, make_error_middleware

error_middleware = make_error_middleware(internal_message="internal error (see the daemon log)", late=late_error)


# Open while draining: /health and /health/models/<uid> say "draining" (503) to load balancers, /metrics keeps
# scraping; neither counts as a request in flight.
_DRAIN_EXEMPT = frozenset({"/health", "/metrics"})


def drain_middleware(state: Any) -> Middleware:
    """Count requests in flight and refuse new work with 503 once SIGTERM started the drain.

    Counting here, around the whole handler, covers a request from its first byte to its stream's last, queued
    or not, so the daemon's shutdown can wait for exactly the requests that were accepted.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in _DRAIN_EXEMPT or is_model_readiness_path(request.path):
            return await handler(request)
        if state.draining:
            raise ShuttingDownError("xinfd is shutting down; retry on another instance")
        state.in_flight += 1
        try:
            return await handler(request)
        finally:
            state.in_flight -= 1

    return middleware
