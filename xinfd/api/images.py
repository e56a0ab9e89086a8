"""The daemon's image routes: ``POST /v1/images/generations``, image-to-image (OpenAI's ``/v1/images/edits``
and Xinference's ``/v1/images/variations``, which its client's ``image_to_image`` calls), and the image files
it serves for ``response_format=url``.

Image-to-image uploads are multipart forms. The daemon reads the form itself (each text field and the image
under a size limit, within the body deadline), checks it (``xinfd.image_protocol.check_image_upload``: not
empty, not too large, an image signature; one image; ``mask`` is refused, naming it, as xinfd does no
inpainting), and proxies the same JSON body a generation has, with the image base64, to the replica's
``images/edits`` (``xinfd.api.bodies.PREPARED_BODY_KEY`` hands it to the proxy as the request's body).

The request is checked with ``xinfd.image_protocol`` (400 naming the field before any replica is involved),
then proxied like every inference request (``xinfd.api.openai.proxy``: router lease, queue, retries, client
disconnect closes the upstream request so the replica stops between denoising steps). Replicas always answer
``b64_json``; for ``url`` the daemon writes each PNG to ``<home>/images/<random name>.png`` and answers
``<scheme>://<host>/v1/images/files/<name>``. Files live ``image_url_lifetime`` seconds
(``XINFD_IMAGE_URL_LIFETIME``): a sweeper removes older ones, and a request for an expired file is a 404 even
between sweeps. Names are 32 random hex digits (128 bits), so a link is as hard to guess as an API key is: like
OpenAI's pre-signed links, a link *is* the permission to read that one image until it expires, and
``/v1/images/files/*`` is served without an API key even when keys are set (``xinfd.api.security``), so
the link works in a browser's ``<img>`` or another program. Everything else still needs the key.

``stream: true`` is relayed as the replica's server-sent events (``xinfd.worker.image_stream``); a stream
carries its images base64 in its ``completed`` events whatever ``response_format`` says, as OpenAI's does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import BodyPartReader, web

from xinfd.api.bodies import PREPARED_BODY_KEY
from xinfd.api.state import STATE
from xinfd.atomic import write_atomic
from xinfd.errors import InvalidRequestError, RequestTimeoutError, XinfdError
from xinfd.http_errors import error_body, error_response, parse_json_object
from xinfd.image_protocol import (
    MAX_IMAGE_BYTES,
    ImageGenerationRequest,
    check_image_upload,
    form_body,
    parse_image_request,
)

log = logging.getLogger(__name__)

PATH = "/v1/images/generations"
EDITS = "/v1/images/edits"
VARIATIONS = "/v1/images/variations"  # Xinference's image-to-image route (its client's image_to_image)
FILES = "/v1/images/files"
# A text form field (prompt, kwargs...) longer than this is refused; prompts are far shorter.
_MAX_FIELD_BYTES = 256 * 1024
_IMAGE_FIELDS = frozenset({"image", "image[]"})
_NAME = re.compile(r"^[0-9a-f]{32}\.png$")
_SWEEP_EVERY_S = 60.0

Proxy = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


def images_dir(app: web.Application) -> Path:
    return Path(app[STATE].settings.home) / "images"


def add_routes(app: web.Application, proxy: Proxy) -> None:
    """The generation route (through ``proxy``), the file route and the sweeper of expired files."""

    async def generations(request: web.Request) -> web.StreamResponse:
        try:
            return _with_detail(await _generations(request, proxy))
        except XinfdError as exc:
            return _with_detail(error_response(exc))

    async def edits(request: web.Request) -> web.StreamResponse:
        try:
            return _with_detail(await _edits(request, proxy))
        except XinfdError as exc:
            return _with_detail(error_response(exc))

    app.router.add_post(PATH, generations)
    app.router.add_post(EDITS, edits)
    app.router.add_post(VARIATIONS, edits)
    app.router.add_get(FILES + "/{name}", _file)
    app.cleanup_ctx.append(_sweeper)


def _with_detail(response: web.StreamResponse) -> web.StreamResponse:
    """An error answer also carries Xinference's ``detail`` (its client shows only ``response.json()["detail"]``,
    so "allowed sizes: 512x512" would otherwise read as a bare "400 Client Error"). Images are never streamed,
    so every answer is whole and can be rewritten."""
    if response.status < 400 or not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return response
    try:
        body = json.loads(response.body)
        body["detail"] = body["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response
    headers = {k: v for k, v in response.headers.items() if k.lower() in ("retry-after", "x-xinfd-replica")}
    return web.json_response(body, status=response.status, headers=headers)


async def _generations(request: web.Request, proxy: Proxy) -> web.StreamResponse:
    request_body = parse_json_object(await request.read())
    parsed = parse_image_request(request_body)
    started = time.monotonic()
    response = await proxy(request, "images/generations")
    return _answer(request, response, parsed, str(request_body.get("model")), started)


async def _edits(request: web.Request, proxy: Proxy) -> web.StreamResponse:
    settings = request.app[STATE].settings
    try:
        async with asyncio.timeout(settings.request_body_timeout):
            fields, images, has_mask = await _read_form(request)
    except TimeoutError:
        raise RequestTimeoutError(f"request body not received within {settings.request_body_timeout:g}s") from None
    if has_mask:
        raise InvalidRequestError(
            "'mask' is not supported: xinfd edits the whole image (image-to-image, no "
            "inpainting); send the image without a mask",
            param="mask",
        )
    if len(images) != 1:
        raise InvalidRequestError(f"'image' must be exactly one image file, got {len(images)}", param="image")
    check_image_upload(images[0])
    body = form_body(fields)
    body["image"] = base64.b64encode(images[0]).decode("ascii")
    parsed = parse_image_request(body, edit=True)
    request[PREPARED_BODY_KEY] = json.dumps(body).encode()
    started = time.monotonic()
    response = await proxy(request, "images/edits")
    return _answer(request, response, parsed, str(body.get("model")), started)


async def _read_form(request: web.Request) -> tuple[dict[str, str], list[bytes], bool]:
    """The form's text fields, its image files, and whether it had a ``mask``; each part under its limit."""
    if request.content_type != "multipart/form-data":
        raise InvalidRequestError(
            f"{request.path} takes multipart/form-data (fields 'image', 'prompt', ...), "
            f"not {request.content_type or 'no content type'}"
        )
    fields: dict[str, str] = {}
    images: list[bytes] = []
    has_mask = False
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise InvalidRequestError("nested multipart forms are not supported")
        name = part.name or ""
        if name in _IMAGE_FIELDS:
            images.append(await _read_part(part, MAX_IMAGE_BYTES, "image"))
        elif name == "mask":
            has_mask = True
            await part.release()
        else:
            data = await _read_part(part, _MAX_FIELD_BYTES, name)
            try:
                fields[name] = data.decode()
            except UnicodeDecodeError:
                raise InvalidRequestError(f"form field '{name}' is not UTF-8 text", param=name) from None
    return fields, images, has_mask


async def _read_part(part: BodyPartReader, limit: int, param: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk():
        size += len(chunk)
        if size > limit:
            raise InvalidRequestError(
                f"'{param}' is over the limit of {limit} bytes ({limit / 2**20:g} MiB)", param=param
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _answer(
    request: web.Request, response: web.StreamResponse, parsed: ImageGenerationRequest, uid: str, started: float
) -> web.StreamResponse:
    """Count the images and, for ``url``, store them and answer links; a stream or an error passes as is."""
    if response.status != 200 or not isinstance(response, web.Response) or response.body is None:
        return response
    assert isinstance(response.body, bytes)
    body = json.loads(response.body)
    data = body.get("data") or []
    state = request.app[STATE]
    state.metrics.images_generated(uid, len(data), time.monotonic() - started)
    if parsed.response_format == "url":
        folder = images_dir(request.app)
        folder.mkdir(parents=True, exist_ok=True)
        base = f"{request.scheme}://{request.host}{FILES}"
        for item in data:
            name = f"{secrets.token_hex(16)}.png"
            write_atomic(folder / name, base64.b64decode(item.pop("b64_json")))
            item["url"] = f"{base}/{name}"
    headers = {k: v for k, v in response.headers.items() if k.lower().startswith("x-xinfd")}
    return web.json_response(body, headers=headers)


async def _file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = images_dir(request.app) / name
    lifetime = request.app[STATE].settings.image_url_lifetime
    if not _NAME.fullmatch(name) or not path.is_file() or _expired(path, lifetime):
        message = f"image {name!r} does not exist or has expired (images are kept {lifetime:g}s)"
        return web.json_response(error_body(message, error_type="invalid_request_error", code="not_found"), status=404)
    return web.FileResponse(path, headers={"Content-Type": "image/png"})


def _expired(path: Path, lifetime: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > lifetime
    except FileNotFoundError:
        return True


def sweep(folder: Path, lifetime: float) -> int:
    """Remove the images older than ``lifetime`` seconds; return how many were removed."""
    removed = 0
    if not folder.is_dir():
        return 0
    for path in folder.iterdir():
        if _NAME.fullmatch(path.name) and _expired(path, lifetime):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    async def loop() -> None:
        while True:
            lifetime = app[STATE].settings.image_url_lifetime
            try:
                removed = await asyncio.to_thread(sweep, images_dir(app), lifetime)
            except OSError as exc:
                log.warning("cannot sweep expired images: %s", exc)
            else:
                if removed:
                    log.info("removed %d expired image(s)", removed)
            await asyncio.sleep(min(_SWEEP_EVERY_S, lifetime))

    task = asyncio.get_running_loop().create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
