"""``/v1/images/generations``: request validation and response bodies (pure functions, no aiohttp).

Shared by the daemon (which checks a body before it proxies, so a bad field is a 400 without a replica round
trip) and the worker host (which also checks ``size`` against what the loaded model generates). The request
is OpenAI's shape (``prompt``, ``n``, ``size``, ``response_format``, ``seed``) plus what Xinference's client
sends: ``size`` written ``WIDTH*HEIGHT`` as well as OpenAI's ``WIDTHxHEIGHT``, and ``kwargs``, a JSON *string*
of pipeline arguments (``negative_prompt``, ``num_inference_steps``, ``guidance_scale``, ``seed``), which is
how ``RESTfulImageModelHandle.text_to_image(prompt, n, size, response_format, **kwargs)`` sends them.

The replica always answers ``b64_json``; for ``response_format="url"`` the daemon stores the images and
answers links it serves (``xinfd.api.images``), so replicas never need to know the daemon's home directory.
"""

from __future__ import annotations

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
_SIZE = re.compile(r"^\s*([0-9]{1,5})\s*[x*X]\s*([0-9]{1,5})\s*$")
# Pipeline arguments accepted from Xinference's ``kwargs`` string and as top-level fields.
_KWARGS = frozenset({"negative_prompt", "num_inference_steps", "guidance_scale", "seed"})


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


def parse_image_request(body: Mapping[str, Any]) -> ImageGenerationRequest:
    """Validate a body; every error is a 400 naming the field.

    :raises InvalidRequestError: for a missing prompt, a bad ``n``/``size``/``response_format`` or a bad
        pipeline argument (top level or inside ``kwargs``).
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
    extra = _pipeline_arguments(body)
    return ImageGenerationRequest(
        prompt=prompt,
        n=n,
        size=size,
        response_format=response_format,
        seed=_seed(extra),
        negative_prompt=_negative_prompt(extra),
        num_inference_steps=_steps(extra),
        guidance_scale=_guidance(extra),
    )


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


def _pipeline_arguments(body: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level pipeline fields, overridden by those in Xinference's ``kwargs`` (a JSON string or object)."""
    merged = {k: body[k] for k in _KWARGS if k in body}
    raw = body.get("kwargs")
    if raw is None:
        return merged
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise InvalidRequestError("'kwargs' must be a JSON object (as a string or an object)",
                                      param="kwargs") from None
    if not isinstance(raw, dict):
        raise InvalidRequestError("'kwargs' must be a JSON object (as a string or an object)", param="kwargs")
    unknown = sorted(set(raw) - _KWARGS)
    if unknown:
        raise InvalidRequestError(
            f"'kwargs' has unsupported key(s) {', '.join(unknown)}; supported: {', '.join(sorted(_KWARGS))}",
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


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
