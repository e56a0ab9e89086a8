"""Reading a request body with a deadline and a size known before the first byte.

Handlers call ``read_body`` only after admission (drain, capacity) is decided, so a request that is refused
anyway never costs its body in memory. A ``Content-Length`` over the app's body limit is a 413 before
anything is read; a body still arriving after ``request_body_timeout`` seconds is a 408, so a client that
trickles its body cannot hold a handler (and the queue slot behind it) forever.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from xinfd.api.state import STATE
from xinfd.errors import RequestTimeoutError
from xinfd.http_errors import parse_json

# A body a handler built from what the client sent (the image routes turn a multipart upload into JSON):
# ``read_body`` answers it instead of the wire's, so the shared proxy path serves that request too.
PREPARED_BODY_KEY = web.RequestKey("xinfd_prepared_body", bytes)


async def read_body(request: web.Request, *, timeout: float, max_size: int) -> bytes:
    """The whole body of ``request``; 413 when its declared size is over ``max_size`` (the app's
    ``client_max_size``, which aiohttp enforces again while reading), 408 after ``timeout`` seconds.
    A ``PREPARED_BODY_KEY`` body is answered as is (its handler already read and limited the upload)."""
    if PREPARED_BODY_KEY in request:
        return request[PREPARED_BODY_KEY]
    declared = request.content_length
    if declared is not None and declared > max_size:
        raise web.HTTPRequestEntityTooLarge(max_size=max_size, actual_size=declared)
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise RequestTimeoutError(f"request body not received within {timeout:g}s") from None


# Launch requests, model specs and scale requests are small; the control app's client_max_size is this.
CONTROL_MAX_BODY = 1024 * 1024


async def control_json(request: web.Request) -> Any:
    """The JSON body of a control-socket request, read with the body deadline (``request_body_timeout``)."""
    settings = request.app[STATE].settings
    raw = await read_body(request, timeout=settings.request_body_timeout, max_size=CONTROL_MAX_BODY)
    return parse_json(raw)
