"""Server-sent events as OpenAI streams them: ``data: <json>\\n\\n`` frames, ended by ``data: [DONE]``.

The writer prepares the HTTP response lazily, on the first frame. Until then a failure of the engine can
still be answered with a proper status code and error body, which lets the daemon's router retry a request
that never produced a byte.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

DONE_FRAME = b"data: [DONE]\n\n"


def encode_event(payload: Mapping[str, Any]) -> bytes:
    """One SSE frame. Compact JSON with raw UTF-8, as OpenAI sends it."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def decode_events(raw: bytes) -> list[Any]:
    """Parse a complete SSE body back into payloads (``"[DONE]"`` stays a string); used by tests and tools."""
    events: list[Any] = []
    for block in raw.decode().split("\n\n"):
        data = "\n".join(line[5:].lstrip(" ") for line in block.splitlines() if line.startswith("data:"))
        if data:
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


class SseWriter:
    """Writes SSE frames to one request, preparing the streaming response on the first frame."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                # Reverse proxies (nginx) must pass tokens through as they come, not buffer them.
                "X-Accel-Buffering": "no",
            }
        )

    @property
    def started(self) -> bool:
        """Whether the status line went out, after which errors can only be reported in-band."""
        return self.response.prepared

    async def send(self, payload: Mapping[str, Any]) -> None:
        await self._write(encode_event(payload))

    async def done(self) -> web.StreamResponse:
        """End a successful stream with ``[DONE]``."""
        await self._write(DONE_FRAME)
        await self.response.write_eof()
        return self.response

    async def fail(self, envelope: Mapping[str, Any]) -> web.StreamResponse:
        """End a stream that broke mid-way: an error frame and no ``[DONE]``, so clients see it is cut."""
        await self._write(encode_event(envelope))
        await self.response.write_eof()
        return self.response

    async def _write(self, frame: bytes) -> None:
        if not self.response.prepared:
            await self.response.prepare(self._request)
        await self.response.write(frame)
