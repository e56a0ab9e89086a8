"""Server-sent events as OpenAI streams them: ``data: <json>\\n\\n`` frames, ended by ``data: [DONE]``.

The stream prepares the HTTP response lazily, on the first frame. Until then a failure of the engine can
still be answered with a proper status code and error body, which lets the daemon's router retry a request
that never produced a byte.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from xinfd.worker.protocol import CompletionFormat, Usage

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


class CompletionStream:
    """One chat or text completion streamed as OpenAI does: for chat a role chunk first, then content deltas,
    a closing chunk with the finish reason, an optional usage chunk, and ``[DONE]``."""

    def __init__(self, request: web.Request, fmt: CompletionFormat) -> None:
        self._request = request
        self._fmt = fmt
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

    async def delta(self, text: str, *, reasoning: str = "", logprobs: Mapping[str, Any] | None = None) -> None:
        await self._send(self._fmt.delta_chunk(text, reasoning=reasoning,
                                               logprobs=dict(logprobs) if logprobs is not None else None))

    async def finish(self, finish_reason: str, usage: Usage) -> web.StreamResponse:
        """End a successful stream."""
        await self._send(self._fmt.closing_chunk(finish_reason))
        if self._fmt.include_usage:
            await self._send(self._fmt.usage_chunk(usage))
        await self._write(DONE_FRAME)
        await self.response.write_eof()
        return self.response

    async def fail(self, envelope: Mapping[str, Any]) -> web.StreamResponse:
        """End a stream that broke mid-way: an error frame and no ``[DONE]``, so clients see it is cut."""
        await self._write(encode_event(envelope))
        await self.response.write_eof()
        return self.response

    async def _send(self, chunk: Mapping[str, Any]) -> None:
        if not self.started and (opening := self._fmt.opening_chunk()) is not None:
            await self._write(encode_event(opening))
        await self._write(encode_event(chunk))

    async def _write(self, frame: bytes) -> None:
        if not self.response.prepared:
            await self.response.prepare(self._request)
        await self.response.write(frame)
