"""``/v1/images/generations`` and ``/v1/images/edits``: request validation and bodies (pure, no aiohttp).

Shared by the daemon (which checks a body before it proxies, so a bad field is a 400 without a replica round
trip) and the worker host (which also checks ``size`` against what the loaded model generates). The request
is OpenAI's shape (``prompt``, ``n``, ``size``, ``response_format``, ``seed``) plus what Xinference's client
sends: ``size`` written ``WIDTH*HEIGHT`` as well as OpenAI's ``WIDTHxHEIGHT``, and ``kwargs``, a JSON *string*
of pipeline arguments (``negative_prompt``, ``num_inference_steps``, ``guidance_scale``, ``seed``), which is
how ``RESTfulImageModelHandle.text_to_image(prompt, n, size, response_format, **kwargs)`` sends them.

Image-to-image (OpenAI's ``/v1/images/edits``, Xinference's ``/v1/images/variations``) arrives as multipart
form data; the daemon turns the form into the same JSON body (``form_body``, strings coerced to numbers and
booleans, the image base64 in ``image``) with ``strength`` allowed as well, and checks the upload here
(``check_image_upload``: size limit, a PNG/JPEG/WebP/GIF/BMP signature) before a replica decodes it.

``stream: true`` answers server-sent events in OpenAI's shape (``stream_event``): ``…progress`` events with
the denoising steps done, ``…partial_image`` events when ``partial_images`` asks for them, then one
``…completed`` event per image, then ``data: [DONE]``; the prefix is ``image_generation`` for generations and
``image_edit`` for edits, as in OpenAI's API.

The replica always answers ``b64_json``; for ``response_format="url"`` the daemon stores the images and
answers links it serves (``xinfd.api.images``), so replicas never need to know the daemon's home directory.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from xinfd.errors import InvalidRequestError

ResponseFormat = Literal["url", "b64_json"]
# OpenAI allows up to 10 images per request (dall-e-2); Xinference's client documents the same bound.
MAX_IMAGES = 10
MAX_STEPS = 500
# OpenAI streams at most 3 partial images per image.
MAX_PARTIAL_IMAGES = 3
# An uploaded image: far above any photo a diffusion model takes in, well under the front end's body limit.
MAX_IMAGE_BYTES = 6 * 1024 * 1024
_IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")
_SIZE = re.compile(r"^\s*([0-9]{1,5})\s*[x*X]\s*([0-9]{1,5})\s*$")
# Pipeline arguments accepted from Xinference's ``kwargs`` string and as top-level fields.
_KWARGS = frozenset({"negative_prompt", "num_inference_steps", "guidance_scale", "seed"})
# Image-to-image also takes how far from the input image the result may go (diffusers' ``strength``).
_EDIT_KWARGS = _KWARGS | {"strength"}
# Form fields (all strings in multipart) and the type each one is coerced to.
_FORM_INTS = frozenset({"n", "partial_images", "seed", "num_inference_steps"})
_FORM_FLOATS = frozenset({"guidance_scale", "strength"})
_FORM_BOOLS = frozenset({"stream"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageGenerationRequest:
    """A validated ``/v1/images/generations`` body; ``size`` is ``None`` for the model's default size."""

    prompt: str
    n: int = 1
    size: tuple[int, int] | None = None
    response_format: ResponseFormat = "url"
    seed: int | None = None
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    stream: bool = False
    partial_images: int = 0
    # Image-to-image only: the input image (still encoded) and the strength of the change.
    image: bytes | None = None
    strength: float | None = None


def parse_size(value: object, param: str = "size") -> tuple[int, int]:
    """``"512x512"`` or ``"512*512"`` as ``(width, height)``.

    :raises InvalidRequestError: naming ``param``.
    """
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None or int(match[1]) == 0 or int(match[2]) == 0:
        raise InvalidRequestError(
            f"'{param}' must be WIDTHxHEIGHT (or WIDTH*HEIGHT) with positive integers, e.g. 512x512; got {value!r}",
            param=param,
        )
    return int(match[1]), int(match[2])


def format_size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def parse_image_request(body: Mapping[str, Any], *, edit: bool = False) -> ImageGenerationRequest:
    """Validate a body (``edit``: an image-to-image body, with ``image`` base64); every error is a 400
    naming the field.

    :raises InvalidRequestError: for a missing prompt, a bad ``n``/``size``/``response_format``/``stream``/
        ``partial_images``, a bad pipeline argument (top level or inside ``kwargs``) or a bad image.
    """
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequestError("'prompt' is required: a non-empty string", param="prompt")
    n = body.get("n", 1)
    n = 1 if n is None else n
    if not _is_int(n) or not 1 <= n <= MAX_IMAGES:
        raise InvalidRequestError(f"'n' must be an integer from 1 to {MAX_IMAGES}, got {n!r}", param="n")
    size_field = body.get("size")
    size = None if size_field in (None, "auto") else parse_size(size_field)
    given = body.get("response_format", "url")
    response_format: ResponseFormat
    if given is None or given == "url":
        response_format = "url"
    elif given == "b64_json":
        response_format = "b64_json"
    else:
        raise InvalidRequestError(
            f"'response_format' must be 'url' or 'b64_json', got {given!r}", param="response_format"
        )
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequestError(f"'stream' must be a boolean, got {stream!r}", param="stream")
    partial = body.get("partial_images", 0)
    partial = 0 if partial is None else partial
    if not _is_int(partial) or not 0 <= partial <= MAX_PARTIAL_IMAGES:
        raise InvalidRequestError(
            f"'partial_images' must be an integer from 0 to {MAX_PARTIAL_IMAGES}, got {partial!r}",
            param="partial_images",
        )
    extra = _pipeline_arguments(body, _EDIT_KWARGS if edit else _KWARGS)
    image = _image(body.get("image")) if edit else None
    return ImageGenerationRequest(
        prompt=prompt,
        n=n,
        size=size,
        response_format=response_format,
        seed=_seed(extra),
        negative_prompt=_negative_prompt(extra),
        num_inference_steps=_steps(extra),
        guidance_scale=_guidance(extra),
        stream=bool(stream),
        partial_images=partial,
        image=image,
        strength=_strength(extra),
    )


def check_image_upload(data: bytes, param: str = "image") -> None:
    """Refuse an upload that is empty, over ``MAX_IMAGE_BYTES`` or not an image file by its signature (the
    replica decodes it, and refuses it with a 400 if the signature lied).

    :raises InvalidRequestError: naming ``param``.
    """
    if not data:
        raise InvalidRequestError(f"'{param}' is empty: upload a PNG, JPEG or WebP file", param=param)
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidRequestError(
            f"'{param}' is {len(data)} bytes; the limit is {MAX_IMAGE_BYTES} bytes ({MAX_IMAGE_BYTES >> 20} MiB)",
            param=param,
        )
    webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    if not webp and not data.startswith(_IMAGE_SIGNATURES):
        raise InvalidRequestError(f"'{param}' is not an image file (expected PNG, JPEG, WebP, GIF or BMP)", param=param)


def form_body(fields: Mapping[str, str]) -> dict[str, Any]:
    """A multipart form's text fields as a JSON body: numbers and booleans from their strings, empty fields
    dropped (Xinference's client sends ``None`` values as absent, some clients as empty strings).

    :raises InvalidRequestError: naming a field whose string is not of its type.
    """
    body: dict[str, Any] = {}
    for key, text in fields.items():
        value = text.strip()
        if not value:
            continue
        try:
            if key in _FORM_INTS:
                body[key] = int(value)
            elif key in _FORM_FLOATS:
                body[key] = float(value)
            elif key in _FORM_BOOLS:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                body[key] = value.lower() in ("true", "1")
            else:
                body[key] = text
        except ValueError:
            raise InvalidRequestError(f"form field '{key}' has a bad value {text!r}", param=key) from None
    return body


def stream_event(kind: str, event: str, fields: Mapping[str, Any]) -> bytes:
    """One SSE frame: ``event: <kind>.<event>`` and its JSON data, with ``type`` set as OpenAI's events do
    (``kind``: ``image_generation`` or ``image_edit``)."""
    name = f"{kind}.{event}"
    data = json.dumps({"type": name, **fields}, separators=(",", ":"))
    return f"event: {name}\ndata: {data}\n\n".encode()


def image_event_fields(b64: str, size: tuple[int, int], *, created: int | None = None) -> dict[str, Any]:
    """The fields OpenAI's ``partial_image``/``completed`` events carry besides ``type``."""
    return {
        "b64_json": b64,
        "created_at": int(time.time()) if created is None else created,
        "size": format_size(size),
        "quality": "auto",
        "background": "opaque",
        "output_format": "png",
    }


# A diffusion pipeline counts no tokens; OpenAI's ``completed`` event has ``usage``, so it is sent with zeros.
NO_USAGE: dict[str, Any] = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}


def check_size(size: tuple[int, int], allowed: Sequence[tuple[int, int]]) -> None:
    """Refuse a size the model does not generate, naming the ones it does."""
    if tuple(size) not in {tuple(s) for s in allowed}:
        sizes = ", ".join(format_size(s) for s in allowed)
        raise InvalidRequestError(
            f"size {format_size(size)} is not supported by this model; allowed sizes: {sizes}", param="size"
        )


def images_body(images_b64: Sequence[str], *, created: int | None = None) -> dict[str, Any]:
    """OpenAI's images response with ``b64_json`` items."""
    return {
        "created": int(time.time()) if created is None else created,
        "data": [{"b64_json": item, "revised_prompt": None} for item in images_b64],
    }


def _pipeline_arguments(body: Mapping[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    """Top-level pipeline fields, overridden by those in Xinference's ``kwargs`` (a JSON string or object)."""
    merged = {k: body[k] for k in allowed if k in body}
    raw = body.get("kwargs")
    if raw is None:
        return merged
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise InvalidRequestError(
                "'kwargs' must be a JSON object (as a string or an object)", param="kwargs"
            ) from None
    if not isinstance(raw, dict):
        raise InvalidRequestError("'kwargs' must be a JSON object (as a string or an object)", param="kwargs")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise InvalidRequestError(
            f"'kwargs' has unsupported key(s) {', '.join(unknown)}; supported: {', '.join(sorted(allowed))}",
            param="kwargs",
        )
    merged.update(raw)
    return merged


def _seed(extra: Mapping[str, Any]) -> int | None:
    seed = extra.get("seed")
    if seed is None:
        return None
    if not _is_int(seed) or not 0 <= seed < 2**63:
        raise InvalidRequestError(f"'seed' must be a non-negative integer, got {seed!r}", param="seed")
    return int(seed)


def _negative_prompt(extra: Mapping[str, Any]) -> str | None:
    value = extra.get("negative_prompt")
    if value is not None and not isinstance(value, str):
        raise InvalidRequestError(f"'negative_prompt' must be a string, got {value!r}", param="negative_prompt")
    return value


def _steps(extra: Mapping[str, Any]) -> int | None:
    value = extra.get("num_inference_steps")
    if value is None:
        return None
    if not _is_int(value) or not 1 <= value <= MAX_STEPS:
        raise InvalidRequestError(
            f"'num_inference_steps' must be an integer from 1 to {MAX_STEPS}, got {value!r}",
            param="num_inference_steps",
        )
    return int(value)


def _guidance(extra: Mapping[str, Any]) -> float | None:
    value = extra.get("guidance_scale")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 100.0:
        raise InvalidRequestError(
            f"'guidance_scale' must be a number from 0 to 100, got {value!r}", param="guidance_scale"
        )
    return float(value)


def _strength(extra: Mapping[str, Any]) -> float | None:
    value = extra.get("strength")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= 1.0:
        raise InvalidRequestError(f"'strength' must be a number in (0, 1], got {value!r}", param="strength")
    return float(value)


def _image(value: object) -> bytes:
    if not isinstance(value, str) or not value:
        raise InvalidRequestError("'image' is required: the image file to edit", param="image")
    try:
        data = base64.b64decode(value, validate=True)
    except ValueError:
        raise InvalidRequestError(
            "'image' must be base64 (the replica body) or an uploaded file", param="image"
        ) from None
    check_image_upload(data)
    return data


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
