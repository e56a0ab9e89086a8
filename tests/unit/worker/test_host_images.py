"""Image parts of chat messages in the worker host, and the library versions a replica reports."""

from __future__ import annotations

import base64
import importlib.metadata
import os
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiohttp import web
from xinfd_echo.model import EchoModel

from xinfd.errors import InvalidRequestError
from xinfd.openai_protocol import parse_chat_request
from xinfd.types import ChatMessage, GeneratedDelta, GenerateRequest
from xinfd.worker.libraries import imported_libraries, module_files

from .conftest import ClientFactory

PNG = b"\x89PNG\r\n\x1a\nnot-really-an-image"


def image_body(url: str, text: str = "read this") -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]}]}


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


class ImageEcho:
    """Answers with the sizes of the images it was given (an image model in miniature)."""

    context_window = None
    accepts_images = True

    def render_chat(self, messages: list[ChatMessage], options: Mapping[str, Any]) -> str:
        return " ".join(m.content for m in messages)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GeneratedDelta]:
        yield GeneratedDelta(text=",".join(str(len(i)) for i in request.images), finish_reason="stop", tokens=1)


def test_image_parts_are_typed_and_text_parts_still_join() -> None:
    chat = parse_chat_request(image_body(data_url(PNG)))
    [message] = chat.messages
    assert message.content == "read this"
    assert message.images[0].data == PNG and message.images[0].media_type == "image/png"
    assert parse_chat_request(image_body("https://example.test/a.png")).messages[0].images[0].url


@pytest.mark.parametrize("url", ["data:image/png;base64,@@@", "data:image/png,raw", "ftp://x/y.png", ""])
def test_bad_image_urls_are_400s_naming_the_part(url: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_chat_request(image_body(url))
    assert caught.value.param == "messages[0].content" and "content[1].image_url" in caught.value.message


async def test_a_text_only_model_refuses_image_parts(make_client: ClientFactory) -> None:
    client = await make_client(EchoModel(), model_uid="echo-1")
    resp = await client.post("/v1/chat/completions", json=image_body(data_url(PNG)))
    assert resp.status == 400
    assert "model 'echo-1' does not accept image input" in (await resp.json())["error"]["message"]


async def test_data_and_http_images_reach_an_image_model(make_client: ClientFactory, aiohttp_server: Any) -> None:
    big = b"x" * 2048

    async def serve_image(request: web.Request) -> web.Response:
        return web.Response(body=big if request.path == "/big.png" else PNG, content_type="image/png")

    app = web.Application()
    app.router.add_get("/{name}", serve_image)
    server = await aiohttp_server(app, host="127.0.0.1")
    client = await make_client(ImageEcho())
    body = image_body(data_url(PNG))
    body["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": str(server.make_url("/a.png"))}})
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["choices"][0]["message"]["content"] == f"{len(PNG)},{len(PNG)}"

    from xinfd.worker import images

    with pytest.raises(InvalidRequestError, match="larger than 1024 bytes"):
        await images.image_bytes(parse_chat_request(image_body(str(server.make_url("/big.png")))).messages,
                                 max_bytes=1024)
    dead = parse_chat_request(image_body("http://127.0.0.1:9/nothing.png")).messages
    with pytest.raises(InvalidRequestError, match="could not be fetched"):
        await images.image_bytes(list(dead), timeout=2)


def test_imported_libraries_reports_versions_of_what_is_imported_only() -> None:
    import aiohttp  # noqa: F401  (imported, but not a reported library)

    found = imported_libraries(("pytest", "aiohttp", "surely_not_imported_module"))
    assert found == {"pytest": importlib.metadata.version("pytest"), "aiohttp": importlib.metadata.version("aiohttp")}
    assert module_files(("pytest",))["pytest"] == sys.modules["pytest"].__file__
    assert os.path.isfile(module_files(("pytest",))["pytest"])
