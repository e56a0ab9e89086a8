"""The SSE relay's keepalive pings and write deadline, against a real aiohttp server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web

from xinfd.api.streaming import PING_FRAME, SlowReaderError, SseRelay

ServerFactory = Callable[..., Any]


async def test_pings_while_silent_then_the_answer(aiohttp_client: ServerFactory) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        relay = SseRelay(request, headers={"X-Test": "1"}, ping_interval=0.05, write_timeout=5)
        answer = await relay.wait(asyncio.sleep(0.3, result=b"data: done\n\n"))
        await relay.write(answer)
        await relay.response.write_eof()
        return relay.response

    app = web.Application()
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    resp = await client.get("/")
    body = await resp.read()
    assert resp.headers["Content-Type"] == "text/event-stream" and resp.headers["X-Test"] == "1"
    assert body.endswith(b"data: done\n\n") and body.count(PING_FRAME) >= 3


async def test_fast_answer_sends_no_ping_and_leaves_status_free(aiohttp_client: ServerFactory) -> None:
    seen: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        relay = SseRelay(request, headers={}, ping_interval=5, write_timeout=5)
        await relay.wait(asyncio.sleep(0))
        seen["prepared"] = relay.prepared  # nothing sent yet: a real error status could still go out
        return web.json_response({"error": "x"}, status=400)

    app = web.Application()
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    resp = await client.get("/")
    assert resp.status == 400 and seen == {"prepared": False}


async def test_a_reader_that_stops_reading_is_cut(aiohttp_server: ServerFactory) -> None:
    outcome: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        relay = SseRelay(request, headers={}, ping_interval=5, write_timeout=0.3)
        chunk = b"data: " + b"x" * 65536 + b"\n\n"
        try:
            for _ in range(10_000):  # far more than any socket buffer holds
                await relay.write(chunk)
        except SlowReaderError as exc:
            outcome["cut"] = str(exc)
            relay.cut(str(exc))
        return relay.response

    app = web.Application()
    app.router.add_get("/", handler)
    server = await aiohttp_server(app)
    conn = socket.create_connection(("127.0.0.1", server.port))
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(30):
            while "cut" not in outcome:
                await asyncio.sleep(0.05)
    finally:
        conn.close()
    assert outcome["cut"] == "client did not read for 0.3s"


async def test_a_retry_reuses_the_relay_already_on_the_wire(aiohttp_client: ServerFactory) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        first = SseRelay.for_request(request, headers={}, ping_interval=0.02, write_timeout=5)
        with contextlib.suppress(ConnectionRefusedError):
            await first.wait(_refused_after(0.1))  # pings went out, then the replica turned out to be dead
        second = SseRelay.for_request(request, headers={}, ping_interval=0.02, write_timeout=5)
        assert second is first and second.prepared
        await second.write(b"data: [DONE]\n\n")
        await second.response.write_eof()
        return second.response

    app = web.Application()
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    body = await (await client.get("/")).read()
    assert body.startswith(PING_FRAME) and body.endswith(b"data: [DONE]\n\n")


async def _refused_after(seconds: float) -> None:
    await asyncio.sleep(seconds)
    raise ConnectionRefusedError("replica socket gone")


def _app(handler: Callable[[web.Request], Any]) -> web.Application:
    from types import SimpleNamespace

    from xinfd.api.middleware import error_middleware
    from xinfd.api.state import STATE

    app = web.Application(middlewares=[error_middleware])
    settings = SimpleNamespace(sse_ping_attempts_seconds=0.05, stream_write_timeout=5)
    app[STATE] = SimpleNamespace(settings=settings)  # type: ignore[assignment]
    app.router.add_get("/", handler)
    return app


class SlowLease:
    """A replica slot that is free only after ``wait`` seconds (the model's queue), or never (``fail``)."""

    def __init__(self, wait: float, fail: Exception | None = None) -> None:
        self.wait, self.fail, self.exited = wait, fail, False

    async def __aenter__(self) -> str:
        await asyncio.sleep(self.wait)
        if self.fail is not None:
            raise self.fail
        return "replica-0"

    async def __aexit__(self, *exc: object) -> bool:
        self.exited = True
        return False


async def test_a_queued_stream_is_pinged_and_keeps_its_slot(aiohttp_client: ServerFactory) -> None:
    from xinfd.api.streaming import STREAM_KEY, queued_keepalive

    lease = SlowLease(0.3)

    async def handler(request: web.Request) -> web.StreamResponse:
        request[STREAM_KEY] = True
        async with queued_keepalive(request, lease) as replica:
            relay = SseRelay.for_request(request, headers={}, ping_interval=1, write_timeout=1)
            await relay.write(f"data: {replica}\n\n".encode())
            await relay.response.write_eof()
            return relay.response

    client = await aiohttp_client(_app(handler))
    body = await (await client.get("/")).read()
    assert body.count(PING_FRAME) >= 3 and body.endswith(b"data: replica-0\n\n") and lease.exited


async def test_a_refusal_after_pings_becomes_an_error_frame(aiohttp_client: ServerFactory) -> None:
    from xinfd.api.streaming import STREAM_KEY, queued_keepalive
    from xinfd.errors import ModelNotReadyError

    async def handler(request: web.Request) -> web.StreamResponse:
        request[STREAM_KEY] = True
        async with queued_keepalive(request, SlowLease(0.2, ModelNotReadyError("no ready replica"))):
            raise AssertionError("not reached")

    client = await aiohttp_client(_app(handler))
    resp = await client.get("/")
    body = await resp.read()
    assert resp.status == 200 and body.startswith(PING_FRAME)
    assert body.rstrip().endswith(b'"code": "model_not_ready"}}') and b"[DONE]" not in body
