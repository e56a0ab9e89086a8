"""Image parts of chat messages, made into bytes for an image model (``TextModel.accepts_images``).

Data URLs were decoded by the protocol; http(s) URLs are fetched here, by the replica, with a size limit and a
timeout, so a slow or huge URL costs that one request only. Models that take no images never get here: the
host answers 400 "model X does not accept image input" first.
"""

from __future__ import annotations

import aiohttp

from xinfd.errors import InvalidRequestError
from xinfd.types import ChatMessage

MAX_IMAGE_BYTES = 20 * 1024 * 1024
FETCH_TIMEOUT_S = 10.0


def has_images(messages: list[ChatMessage]) -> bool:
    return any(m.images for m in messages)


async def image_bytes(
    messages: list[ChatMessage], *, max_bytes: int = MAX_IMAGE_BYTES, timeout: float = FETCH_TIMEOUT_S
) -> tuple[bytes, ...]:
    """Every image of ``messages`` in order; a URL that fails, is too large or too slow is a 400 naming it."""
    found: list[bytes] = []
    session: aiohttp.ClientSession | None = None
    try:
        for message in messages:
            for image in message.images:
                if not image.url:
                    found.append(image.data)
                    continue
                if session is None:
                    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
                found.append(await _fetch(session, image.url, max_bytes))
    finally:
        if session is not None:
            await session.close()
    return tuple(found)


async def _fetch(session: aiohttp.ClientSession, url: str, max_bytes: int) -> bytes:
    try:
        async with session.get(url) as response:
            if response.status != 200:
                raise InvalidRequestError(f"image {url}: HTTP {response.status}", param="messages")
            if (response.content_length or 0) > max_bytes:
                raise InvalidRequestError(f"image {url} is larger than {max_bytes} bytes", param="messages")
            data = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                data += chunk
                if len(data) > max_bytes:
                    raise InvalidRequestError(f"image {url} is larger than {max_bytes} bytes", param="messages")
            return bytes(data)
    except TimeoutError:
        raise InvalidRequestError(f"image {url}: no answer within the fetch timeout", param="messages") from None
    except aiohttp.ClientError as exc:
        raise InvalidRequestError(f"image {url} could not be fetched: {exc}", param="messages") from None
