"""``stream: true`` for the worker host's image routes: server-sent events in OpenAI's image-stream shape.

Events (``<kind>`` is ``image_generation`` or ``image_edit``, as in OpenAI's API):

- ``<kind>.progress`` (xinfd's own): ``{"step", "total_steps", "created_at"}``, the denoising steps done;
  coalesced, so a fast pipeline sends at most one every ``PROGRESS_EVERY_S`` (and always the last step);
- ``<kind>.partial_image`` (OpenAI's): an intermediate image, when the request asked for ``partial_images``,
  with ``partial_image_index`` and xinfd's ``index`` (which of the ``n`` images);
- ``<kind>.completed`` (OpenAI's): one per image, with ``b64_json``, ``size``, ``usage`` and ``index``;
- then ``data: [DONE]``. A failure after the 200 went out is an ``error`` event (``{"error": {...}}``).

The pipeline runs in its own task; the handler writes the events it queues. If the client goes away, the
handler is cancelled (aiohttp) or its write fails, and either way the generation task is cancelled, which
stops the pipeline between steps (the engine's contract).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from xinfd.errors import PluginError, XinfdError
from xinfd.http_errors import error_body, exception_body
from xinfd.image_protocol import NO_USAGE, image_event_fields, stream_event
from xinfd.types import ImageModel, ImageRequest

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5


class StreamProgress:
    """The progress callback of a streamed request: logs through ``log_progress`` and queues events for the
    handler, from the pipeline's thread (``call_soon_threadsafe``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, log_progress: Callable[[int, int], None]) -> None:
        self.loop = loop
        self.log_progress = log_progress
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        self.done = done
        self.log_progress(done, total)
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ("progress", (done, total)))

    def partial(self, index: int, partial_index: int, png: bytes) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ("partial", (index, partial_index, png)))


async def stream_images(
    request: web.Request, model: ImageModel, job: ImageRequest, *, kind: str, progress: Callable[[int, int], None]
) -> web.StreamResponse:
    """Run ``job`` and answer its events as SSE; see the module docstring."""
    loop = asyncio.get_running_loop()
    events = StreamProgress(loop, progress)
    size = (job.width, job.height)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    started = time.monotonic()
    generation = loop.create_task(model.generate_images(job, events))
    last_sent = 0.0
    pending: tuple[int, int] | None = None
    try:
        while True:
            getter = loop.create_task(events.queue.get())
            timeout = None if pending is None else max(0.0, PROGRESS_EVERY_S - (time.monotonic() - last_sent))
            done, _ = await asyncio.wait({getter, generation}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
            items = [getter.result()] if getter in done else []
            while not events.queue.empty():
                items.append(events.queue.get_nowait())
            for what, value in items:
                if what == "progress":
                    pending = value
                else:
                    index, partial_index, png = value
                    await response.write(
                        stream_event(
                            kind,
                            "partial_image",
                            {
                                **image_event_fields(base64.b64encode(png).decode("ascii"), size),
                                "partial_image_index": partial_index,
                                "index": index,
                            },
                        )
                    )
            now = time.monotonic()
            if pending is not None and (
                now - last_sent >= PROGRESS_EVERY_S or pending[0] >= pending[1] or generation.done()
            ):
                await response.write(
                    stream_event(
                        kind,
                        "progress",
                        {"step": pending[0], "total_steps": pending[1], "created_at": int(time.time())},
                    )
                )
                pending, last_sent = None, now
            if generation.done() and events.queue.empty():
                break
        images = generation.result()
        check_images(images, job.n)
        for index, png in enumerate(images):
            await response.write(
                stream_event(
                    kind,
                    "completed",
                    {
                        **image_event_fields(base64.b64encode(png).decode("ascii"), size),
                        "usage": NO_USAGE,
                        "index": index,
                    },
                )
            )
        await response.write(b"data: [DONE]\n\n")
    except (asyncio.CancelledError, ConnectionError):
        log.info(
            "%s: image stream cancelled after %d step(s), %.3fs",
            job.request_id,
            events.done,
            time.monotonic() - started,
        )
        raise
    except XinfdError as exc:
        await _error_event(response, exception_body(exc))
    except Exception as exc:  # the engine failed after the 200 went out: tell the client in-band
        log.exception("%s: image generation failed mid-stream", job.request_id)
        await _error_event(
            response,
            error_body(
                f"image generation failed: {type(exc).__name__}", error_type="server_error", code="engine_error"
            ),
        )
    finally:
        if not generation.done():
            generation.cancel()
        with contextlib.suppress(BaseException):
            await generation
    log.info("%s streamed images n=%d steps=%d %.3fs", job.request_id, job.n, events.done, time.monotonic() - started)
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


async def _error_event(response: web.StreamResponse, envelope: dict[str, Any]) -> None:
    with contextlib.suppress(ConnectionError):
        await response.write(b"event: error\ndata: " + _json(envelope) + b"\n\n")


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def check_images(images: list[bytes], n: int) -> None:
    """The engine kept its contract: ``n`` non-empty PNGs."""
    if len(images) != n or not all(isinstance(i, bytes) and i for i in images):
        raise PluginError(f"the engine returned {len(images)} image(s) for n={n}")
