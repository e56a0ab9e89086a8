"""The worker host's ``POST /v1/images/generations`` for an ``ImageModel`` (``xinfd.types``).

The engine only turns an ``ImageRequest`` into PNG bytes; this route validates the body
(``xinfd.image_protocol``, the same checks the daemon ran, plus ``size`` against the model's ``sizes``),
logs progress (denoising steps done) in the replica log, and always answers ``b64_json``: the daemon turns
the images into links for ``response_format="url"``.

Cancellation: aiohttp cancels the handler when the client (the daemon) disconnects, and ``/abort`` or a
shutdown cancels it through ``InFlight``; the cancellation reaches the engine's ``generate_images``, whose
contract is to stop between denoising steps.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time

from aiohttp import web

from xinfd.errors import PluginError, UnsupportedEndpointError
from xinfd.http_errors import parse_json_object
from xinfd.image_protocol import check_size, format_size, images_body, parse_image_request
from xinfd.types import ImageModel, ImageRequest
from xinfd.worker import host

log = logging.getLogger(__name__)

IMAGE_MODEL_KEY = web.AppKey[ImageModel]("xinfd_worker_image_model")
PATH = "/v1/images/generations"
# Progress lines: at most one per this many seconds per request, plus the last step.
_PROGRESS_EVERY_S = 2.0


def add_image_routes(app: web.Application, model: ImageModel | None) -> None:
    """Add the images route: served by ``model``, or a 404 saying the model makes no images."""
    if model is None:
        app.router.add_post(PATH, _unsupported)
        return
    sizes = model.sizes
    if not sizes or not all(_is_size(s) for s in sizes):
        raise TypeError(f"{type(model).__name__}.sizes must be a non-empty tuple of (width, height), got {sizes!r}")
    app[IMAGE_MODEL_KEY] = model
    app.router.add_post(PATH, _generations)


def _is_size(value: object) -> bool:
    return (isinstance(value, tuple) and len(value) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in value))


async def _unsupported(request: web.Request) -> web.Response:
    uid = request.app[host.CONFIG_KEY].model_uid
    raise UnsupportedEndpointError(f"model {uid!r} does not support image generation ({request.path})")


class _Progress:
    """Logs ``steps done/total`` for one request, throttled, from whichever thread the pipeline runs in."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.last_logged = 0.0
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        self.done = done
        now = time.monotonic()
        if done >= total or now - self.last_logged >= _PROGRESS_EVERY_S:
            self.last_logged = now
            log.info("%s: step %d/%d", self.request_id, done, total)


async def _generations(request: web.Request) -> web.Response:
    model = request.app[IMAGE_MODEL_KEY]
    parsed = parse_image_request(parse_json_object(await request.read()))
    size = parsed.size if parsed.size is not None else model.sizes[0]
    check_size(size, model.sizes)
    request_id = request[host.REQUEST_ID_KEY]
    job = ImageRequest(
        request_id=request_id,
        prompt=parsed.prompt,
        n=parsed.n,
        width=size[0],
        height=size[1],
        seed=parsed.seed,
        negative_prompt=parsed.negative_prompt,
        num_inference_steps=parsed.num_inference_steps,
        guidance_scale=parsed.guidance_scale,
    )
    inflight = request.app[host.INFLIGHT_KEY]
    task = asyncio.current_task()
    assert task is not None  # aiohttp runs every handler in a task
    inflight.start(request_id, task)
    progress = _Progress(request_id)
    started = time.monotonic()
    try:
        images = await model.generate_images(job, progress)
    except asyncio.CancelledError:
        log.info("%s: image generation cancelled after %d step(s), %.3fs",
                 request_id, progress.done, time.monotonic() - started)
        raise
    finally:
        inflight.finish(request_id)
    if len(images) != parsed.n or not all(isinstance(i, bytes) and i for i in images):
        raise PluginError(f"the engine returned {len(images)} image(s) for n={parsed.n}")
    elapsed = time.monotonic() - started
    log.info("%s images n=%d size=%s steps=%d %.3fs (%.3fs per image)",
             request_id, parsed.n, format_size(size), progress.done, elapsed, elapsed / parsed.n)
    return web.json_response(images_body([base64.b64encode(i).decode("ascii") for i in images]))
