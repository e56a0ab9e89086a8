"""The worker host's image routes for an ``ImageModel`` (``xinfd.types``): ``POST /v1/images/generations`` and
``POST /v1/images/edits`` (image-to-image; the daemon turns OpenAI's and Xinference's multipart uploads into
a JSON body with the image base64, see ``xinfd.image_protocol``).

The engine only turns an ``ImageRequest`` into PNG bytes; these routes validate the body (the same checks the
daemon ran, plus ``size`` against the model's ``sizes`` and the upload decoded with Pillow: a file that is not
an image is a 400 naming ``image``), log progress (denoising steps done, at most one line every few seconds)
in the replica log, and answer ``b64_json``: the daemon turns the images into links for ``response_format=url``.

``stream: true`` answers server-sent events (``xinfd.worker.image_stream``) instead of one JSON body.

Cancellation: aiohttp cancels the handler when the client (the daemon) disconnects, and ``/abort`` or a
shutdown cancels it through ``InFlight``; the cancellation reaches the engine's ``generate_images``, whose
contract is to stop between denoising steps. A stream is cancelled the same way.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
from typing import Any

from aiohttp import web

from xinfd.errors import InvalidRequestError, UnsupportedEndpointError
from xinfd.http_errors import parse_json_object
from xinfd.image_protocol import ImageGenerationRequest, check_size, format_size, images_body, parse_image_request
from xinfd.types import ImageModel, ImageRequest
from xinfd.worker import host
from xinfd.worker.image_stream import check_images, stream_images

log = logging.getLogger(__name__)

IMAGE_MODEL_KEY = web.AppKey[ImageModel]("xinfd_worker_image_model")
PATH = "/v1/images/generations"
EDITS_PATH = "/v1/images/edits"
# Progress lines: at most one per this many seconds per request, plus the last step.
_PROGRESS_EVERY_S = 2.0
# An input image larger than this many pixels is refused before it is decoded (a small file can claim a
# huge canvas); far beyond what a diffusion model is given.
_MAX_INPUT_PIXELS = 64 * 1024 * 1024


def add_image_routes(app: web.Application, model: ImageModel | None) -> None:
    """Add the images routes: served by ``model``, or a 404 saying the model makes no images."""
    if model is None:
        app.router.add_post(PATH, _unsupported)
        app.router.add_post(EDITS_PATH, _unsupported)
        return
    sizes = model.sizes
    if not sizes or not all(_is_size(s) for s in sizes):
        raise TypeError(f"{type(model).__name__}.sizes must be a non-empty tuple of (width, height), got {sizes!r}")
    app[IMAGE_MODEL_KEY] = model
    app.router.add_post(PATH, _generations)
    app.router.add_post(EDITS_PATH, _edits)


def _is_size(value: object) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in value)
    )


async def _unsupported(request: web.Request) -> web.Response:
    uid = request.app[host.CONFIG_KEY].model_uid
    raise UnsupportedEndpointError(f"model {uid!r} does not support image generation ({request.path})")


class Progress:
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


async def _generations(request: web.Request) -> web.StreamResponse:
    parsed = parse_image_request(parse_json_object(await request.read()))
    return await _serve(request, parsed, image=None, kind="image_generation")


async def _edits(request: web.Request) -> web.StreamResponse:
    model = request.app[IMAGE_MODEL_KEY]
    uid = request.app[host.CONFIG_KEY].model_uid
    if not getattr(model, "accepts_image", False):
        raise UnsupportedEndpointError(f"model {uid!r} does not support image-to-image ({request.path})")
    parsed = parse_image_request(parse_json_object(await request.read()), edit=True)
    assert parsed.image is not None  # parse_image_request(edit=True) requires it
    image = await asyncio.to_thread(decode_image, parsed.image)
    return await _serve(request, parsed, image=image, kind="image_edit")


def decode_image(data: bytes) -> Any:
    """The uploaded file as a ``PIL.Image.Image``, fully decoded.

    :raises InvalidRequestError: naming ``image`` when Pillow cannot decode it or it is too large.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > _MAX_INPUT_PIXELS:
            raise InvalidRequestError(
                f"'image' is {image.width}x{image.height} pixels; the limit is {_MAX_INPUT_PIXELS} pixels",
                param="image",
            )
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidRequestError(f"'image' could not be decoded as an image: {exc}", param="image") from None
    return image


async def _serve(request: web.Request, parsed: ImageGenerationRequest, *, image: Any, kind: str) -> web.StreamResponse:
    model = request.app[IMAGE_MODEL_KEY]
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
        image=image,
        strength=parsed.strength,
        partial_images=parsed.partial_images if parsed.stream else 0,
    )
    inflight = request.app[host.INFLIGHT_KEY]
    task = asyncio.current_task()
    assert task is not None  # aiohttp runs every handler in a task
    inflight.start(request_id, task)
    started = time.monotonic()
    try:
        if parsed.stream:
            return await stream_images(request, model, job, kind=kind, progress=Progress(request_id))
        progress = Progress(request_id)
        try:
            images = await model.generate_images(job, progress)
        except asyncio.CancelledError:
            log.info(
                "%s: image generation cancelled after %d step(s), %.3fs",
                request_id,
                progress.done,
                time.monotonic() - started,
            )
            raise
    finally:
        inflight.finish(request_id)
    check_images(images, parsed.n)
    elapsed = time.monotonic() - started
    log.info(
        "%s images n=%d size=%s steps=%d %.3fs (%.3fs per image)",
        request_id,
        parsed.n,
        format_size(size),
        progress.done,
        elapsed,
        elapsed / parsed.n,
    )
    return web.json_response(images_body([base64.b64encode(i).decode("ascii") for i in images]))
