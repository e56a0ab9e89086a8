"""Front-end request checks and the SSE relay's keepalive and write deadline.

Validation: the daemon runs the worker's own validators (``xinfd.openai_protocol``) before it proxies, so a
bad field is a 400 naming it (``max_tokens``, ``messages[1].role``) without a replica round trip, and a bad
request never takes a queue slot. Checks that need the model's tokenizer (prompt longer than the context,
with the token counts) stay in the worker, which answers them the same way.

Keepalive: a model can be silent for a long time before its first token (prefill of a long prompt, a busy
batch) and between tokens. Reverse proxies and clients cut idle connections, so while the replica says
nothing the relay sends an SSE comment (``: ping``) every ``XINFERENCE_SSE_PING_ATTEMPTS_SECONDS``; OpenAI
clients ignore comments. The client's response is prepared lazily: if the replica answers within the first
interval (the usual case), its real status goes out (400, 503...); only a request that has already been
pinged reports a late upstream error in-band, as an error frame, because its 200 is on the wire.

Write deadline: a client that stops reading fills the socket buffers, and ``write`` then waits; after
``stream_write_timeout`` seconds of that the relay cuts the client off, which closes the upstream request and
makes the replica abort the sequence instead of generating for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from xinfd.api.state import STATE
from xinfd.image_protocol import parse_image_request
from xinfd.openai_protocol import parse_chat_request, parse_completion_request, parse_embedding_request
from xinfd.rerank_protocol import parse_rerank_request

log = logging.getLogger(__name__)

T = TypeVar("T")
PING_FRAME = b": ping\n\n"
STREAM_KEY = web.RequestKey("xinfd_stream", bool)
STARTED_KEY = web.RequestKey("xinfd_started", float)  # monotonic arrival time, for time-to-first-token

_VALIDATORS: dict[str, Callable[[Mapping[str, Any]], object]] = {
    "chat/completions": parse_chat_request,
    "completions": parse_completion_request,
    "embeddings": parse_embedding_request,
    "rerank": parse_rerank_request,
    # Checked again here only to learn whether the request streams (the image routes checked the fields).
    "images/generations": parse_image_request,
    "images/edits": functools.partial(parse_image_request, edit=True),
}


def validate_request(request: web.Request, endpoint: str, body: Mapping[str, Any]) -> None:
    """Raise ``InvalidRequestError`` (400, ``param`` set) for a bad body; remember whether it streams."""
    validator = _VALIDATORS.get(endpoint)
    parsed = validator(body) if validator is not None else None
    request[STREAM_KEY] = bool(getattr(parsed, "stream", False))
    request[STARTED_KEY] = time.monotonic()


class SlowReaderError(ConnectionError):
    """The client did not take a write within the write deadline."""


class SseRelay:
    """The client side of one streamed response: lazy prepare, pings while silent, writes with a deadline."""

    def __init__(
        self, request: web.Request, *, headers: Mapping[str, str], ping_interval: float, write_timeout: float
    ) -> None:
        self.request = request
        self.ping_interval = ping_interval
        self.write_timeout = write_timeout
        self.pings = 0
        self.response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                # Reverse proxies (nginx) must pass frames through as they come, not buffer them.
                "X-Accel-Buffering": "no",
                **headers,
            },
        )

    @classmethod
    def for_request(
        cls, request: web.Request, *, headers: Mapping[str, str], ping_interval: float, write_timeout: float
    ) -> SseRelay:
        """The request's relay: a retry on another replica (connection refused after pings went out) must
        keep writing to the response already on the wire, not prepare a second one."""
        relay = request.get(RELAY_KEY)
        if relay is None:
            relay = cls(request, headers=headers, ping_interval=ping_interval, write_timeout=write_timeout)
            request[RELAY_KEY] = relay
        elif not relay.prepared:
            relay.response.headers.update(headers)  # e.g. the replica header, known only after the queue
        return relay

    @property
    def prepared(self) -> bool:
        return self.response.prepared

    async def wait(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable``, sending a ping every ``ping_interval`` seconds until it completes.

        Cancellation (the client went away) cancels ``awaitable`` too: the upstream request is dropped.
        """
        task = asyncio.ensure_future(awaitable)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.ping_interval)
                if done:
                    return task.result()
                await self.write(PING_FRAME)
                self.pings += 1
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def read(self, stream: aiohttp.StreamReader) -> bytes:
        """The next bytes of the replica's stream (b"" at its end), pinging the client while it is silent.

        Data already buffered is taken without awaiting; otherwise ``readany`` is awaited under a timeout,
        which is cheap per token (a timer handle, not a task) and safe to cancel: a StreamReader keeps
        whatever arrives in its buffer for the next call.
        """
        chunk = stream.read_nowait()
        if chunk or stream.at_eof():
            return chunk
        while True:
            try:
                async with asyncio.timeout(self.ping_interval):
                    return await stream.readany()
            except TimeoutError:
                await self.write(PING_FRAME)
                self.pings += 1

    async def write(self, data: bytes) -> None:
        if not self.response.prepared:
            await self.response.prepare(self.request)
        try:
            async with asyncio.timeout(self.write_timeout):
                await self.response.write(data)
        except TimeoutError:
            raise SlowReaderError(f"client did not read for {self.write_timeout:g}s") from None

    async def error_frame(self, envelope: Mapping[str, Any]) -> None:
        await self.write(f"data: {json.dumps(envelope)}\n\n".encode())

    def cut(self, reason: str) -> None:
        """Drop the client connection (slow reader): no more writes can go through."""
        log.warning("cutting stream to %s: %s", self.request.remote, reason)
        transport = self.request.transport
        if transport is not None:
            transport.abort()


RELAY_KEY = web.RequestKey("xinfd_relay", SseRelay)


@contextlib.asynccontextmanager
async def queued_keepalive(request: web.Request, lease: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """Enter ``lease`` (a replica slot, which may wait in the model's queue), pinging a streaming client
    while it waits: the queue is silence too. Non-streaming requests enter it plainly.

    A refusal after pings went out (say every replica died while the request was queued) cannot change the
    status any more; ``error_middleware`` turns it into an error frame on the relay (see ``late_error``).
    """
    if not request.get(STREAM_KEY, False):
        async with lease as entered:
            yield entered
        return
    settings = request.app[STATE].settings
    relay = SseRelay.for_request(
        request,
        headers={},
        ping_interval=settings.sse_ping_attempts_seconds,
        write_timeout=settings.stream_write_timeout,
    )
    entered = await relay.wait(lease.__aenter__())
    try:
        yield entered
    except BaseException as exc:
        if not await lease.__aexit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        await lease.__aexit__(None, None, None)


async def late_error(request: web.Request, envelope: Mapping[str, Any]) -> web.StreamResponse | None:
    """If this request's SSE response is already on the wire, end it with ``envelope`` as an error frame
    and return it; None when a normal error response can still be sent."""
    relay: SseRelay | None = request.get(RELAY_KEY)
    if relay is None or not relay.prepared:
        return None
    with contextlib.suppress(ConnectionError):
        await relay.error_frame(envelope)
        await relay.response.write_eof()
    return relay.response
