"""A tiny random GOT-OCR2 (``tiny_got_ocr2``) behind the worker host, as a replica serves it: an ``image_url`` data
URL in, a 200 with the OCR text and exact usage out; a chat without an image is a 400."""

from __future__ import annotations

import base64
from typing import Any

import pytest

pytest.importorskip("transformers")
pytest.importorskip("PIL")

from xinfd_engines.got_ocr2 import GotOcr2Model
from xinfd_engines.transformers_model import TransformersOptions

from tests.unit.engines.tiny_got_ocr2 import build_tiny_got_ocr2, tiny_png
from tests.unit.worker.conftest import build_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> GotOcr2Model:
    folder = build_tiny_got_ocr2(tmp_path_factory.mktemp("got") / "m")
    return GotOcr2Model.load(str(folder), TransformersOptions(batch_size=4))


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


async def test_the_worker_host_serves_image_chats(model: GotOcr2Model, aiohttp_client: Any) -> None:
    client = await aiohttp_client(build_app(model, model_uid="ocr-1", context_length=8192))
    body = {
        "model": "ocr-1",
        "max_tokens": 5,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "ocr"},
                    {"type": "image_url", "image_url": {"url": data_url(tiny_png())}},
                ],
            }
        ],
    }
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert answer["choices"][0]["message"]["content"] and answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 5
    assert answer["usage"]["prompt_tokens"] == len(model.prompt_ids["ocr"])

    resp = await client.post(
        "/v1/chat/completions", json={"model": "ocr-1", "messages": [{"role": "user", "content": "read it"}]}
    )
    assert resp.status == 400 and "is an OCR model" in (await resp.json())["error"]["message"]
