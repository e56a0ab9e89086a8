"""GOT-OCR2 through the real daemon: the builtin ``GOT-OCR2-hf`` family launched on a tiny random native GOT-OCR2
built in the test (``--model-path``, venvs off), driven by the openai SDK with an ``image_url`` part: a data URL
of a small PNG, and an http URL served by a loopback server the test starts. Random weights write garbage: the
answers are checked for their shape (200, some text, exact usage), never their words."""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
pytest.importorskip("PIL")

import openai

from tests.integration.conftest import Daemon
from tests.unit.engines.tiny_got_ocr2 import IMAGE_TOKENS, build_tiny_got_ocr2, tiny_png

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture
def png_server() -> Iterator[str]:
    """A loopback HTTP server answering every GET with the test PNG; stopped after the test."""
    body = tiny_png(40, 24)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the test reads no access log
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/page.png"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def image_message(url: str, text: str | None = None) -> list[Any]:
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": url}}]
    if text is not None:
        parts.insert(0, {"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


def expected_prompt_tokens(folder: Path) -> dict[str, int]:
    """The prompt GOT is fed, counted from the processor itself (the ChatML turns with the image's tokens)."""
    from PIL import Image
    from transformers import AutoProcessor

    processor: Any = AutoProcessor.from_pretrained(folder)
    image = Image.new("RGB", (40, 24), "white")
    return {
        mode: len(processor(images=image, format=mode == "format", num_image_tokens=IMAGE_TOKENS)["input_ids"][0])
        for mode in ("ocr", "format")
    }


def test_got_ocr2_reads_data_and_http_images(daemon: Daemon, tmp_path: Path, png_server: str) -> None:
    folder = build_tiny_got_ocr2(tmp_path / "got-ocr2")
    daemon.xinfctl("launch", "-n", "GOT-OCR2-hf", "-e", "transformers", "--model-path", str(folder), timeout=300)
    api = openai.OpenAI(base_url=daemon.endpoint + "/v1", api_key="none", max_retries=0, timeout=120)
    prompt_tokens = expected_prompt_tokens(folder)

    data_url = "data:image/png;base64," + base64.b64encode(tiny_png()).decode()
    answer = api.chat.completions.create(model="GOT-OCR2-hf", messages=image_message(data_url), max_tokens=6)
    assert answer.choices[0].message.content and answer.choices[0].finish_reason == "length"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (prompt_tokens["ocr"], 6)

    fetched = api.chat.completions.create(
        model="GOT-OCR2-hf", messages=image_message(png_server, "format"), max_tokens=4
    )
    assert fetched.choices[0].message.content and fetched.usage is not None
    assert (fetched.usage.prompt_tokens, fetched.usage.completion_tokens) == (prompt_tokens["format"], 4)

    streamed = api.chat.completions.create(
        model="GOT-OCR2-hf",
        messages=image_message(data_url, "ocr"),
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(streamed)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = next(c.usage for c in chunks if c.usage is not None)
    assert text and len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt_tokens["ocr"], 5)

    with pytest.raises(openai.BadRequestError, match="is an OCR model"):
        api.chat.completions.create(model="GOT-OCR2-hf", messages=[{"role": "user", "content": "hello"}])
    with pytest.raises(openai.BadRequestError, match="'format' for formatted OCR"):
        api.chat.completions.create(model="GOT-OCR2-hf", messages=image_message(data_url, "summarise this"))
