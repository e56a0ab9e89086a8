"""GOT-OCR2 as an OCR chat model, in-process on a tiny random native GOT-OCR2 (``tiny_got_ocr2``): the loader's
choice, image in -> streamed text, exact usage, ``max_tokens``, stop strings, the task modes, the 400s (no image,
two images, free text, not an image), cancellation; the remote-code path's file handling. The worker host in
front of it: ``test_got_ocr2_host``. Random weights write garbage, so answers are checked for their shape, never
their words."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
pytest.importorskip("PIL")

from xinfd_engines import got_ocr2, got_ocr2_remote
from xinfd_engines import transformers as engine
from xinfd_engines.got_ocr2 import GotOcr2Model, got_ocr2_variant, image_token_count
from xinfd_engines.got_ocr2_remote import GotOcr2RemoteModel, remote_prompt
from xinfd_engines.transformers_model import TransformersOptions, TransformersTextModel

from tests.unit.engines.conftest import make_model, make_replica
from tests.unit.engines.tiny_got_ocr2 import IMAGE_TOKENS, build_tiny_got_ocr2, tiny_png
from tests.unit.engines.tiny_models import build_tiny_llama
from xinfd.errors import InvalidRequestError
from xinfd.types import ChatMessage, GeneratedDelta, GenerateRequest, ImageInput

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning"),
    # One loop for the module: generate() threads hand tokens to the loop that was running at the request.
    pytest.mark.asyncio(loop_scope="module"),
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_got_ocr2(tmp_path_factory.mktemp("got") / "m")


@pytest.fixture(scope="module")
def model(tiny_dir: Path) -> GotOcr2Model:
    return GotOcr2Model.load(str(tiny_dir), TransformersOptions(batch_size=4))


def page(text: str = "", images: int = 1) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text, images=tuple(ImageInput(data=tiny_png()) for _ in range(images)))]


def request(model: GotOcr2Model, *, text: str = "", image: bytes | None = None, **fields: Any) -> GenerateRequest:
    values: dict[str, Any] = {
        "request_id": "r",
        "max_tokens": 8,
        "kind": "chat",
        "temperature": 0.0,
        "prompt": model.render_chat(page(text), {}),
        "images": (tiny_png() if image is None else image,),
    }
    values.update(fields)
    return GenerateRequest(**values)


async def collect(deltas: AsyncIterator[GeneratedDelta]) -> list[GeneratedDelta]:
    return [delta async for delta in deltas]


# -- which model object the transformers engine loads ---------------------------------------------------------


def test_variant_is_read_from_the_weights_config(tmp_path: Path, tiny_dir: Path) -> None:
    assert got_ocr2_variant(str(tiny_dir)) == "native"
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"model_type": "GOT", "architectures": ["GOTQwenForCausalLM"]}))
    assert got_ocr2_variant(str(remote)) == "remote"
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert got_ocr2_variant(str(llama)) is None
    assert got_ocr2_variant(str(tmp_path / "nothing")) is None  # not a folder nor a cached hub id
    assert got_ocr2_variant(str(tmp_path / "weights.gguf")) is None


def test_the_engine_loads_ocr_weights_as_an_image_model_and_others_as_text(tiny_dir: Path, tmp_path: Path) -> None:
    ocr = engine.ENGINE.load(
        make_model(name="GOT-OCR2-hf", abilities=("chat", "vision")),
        make_replica("transformers", gpus=(), options={"model_path": str(tiny_dir)}),
    )
    assert isinstance(ocr, GotOcr2Model) and ocr.accepts_images is True
    llama = build_tiny_llama(tmp_path / "llama")
    text = engine.ENGINE.load(make_model(), make_replica("transformers", gpus=(), options={"model_path": str(llama)}))
    assert isinstance(text, TransformersTextModel) and not getattr(text, "accepts_images", False)
    text.close()


def test_remote_code_weights_need_trust_remote_code(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="trust_remote_code"):
        got_ocr2.load_got_ocr2(str(tmp_path), "remote", TransformersOptions(), trust_remote_code=False)


def test_image_tokens_follow_the_vision_config() -> None:
    class Vision:
        image_size, patch_size = 1024, 16

    assert image_token_count(Vision()) == 256  # the released weights
    Vision.image_size, Vision.patch_size = 32, 4
    assert image_token_count(Vision()) == IMAGE_TOKENS


# -- the model object ------------------------------------------------------------------------------------------


async def test_an_image_streams_text_with_exact_usage_and_max_tokens(model: GotOcr2Model) -> None:
    deltas = await collect(model.generate(request(model, max_tokens=6)))
    assert len(deltas) > 1 and all(d.reasoning == "" for d in deltas)  # streamed, several deltas
    assert "".join(d.text for d in deltas)  # some text (garbage: random weights)
    assert deltas[-1].finish_reason == "length" and deltas[-1].tokens == 6
    assert [d.finish_reason for d in deltas[:-1]] == [None] * (len(deltas) - 1)
    # The prompt counted for usage is the one the processor feeds the model, image tokens included.
    encoded = model.processor(images=got_ocr2.decode_image(tiny_png(64, 40)), num_image_tokens=model.num_image_tokens)
    prompt = model.render_chat(page(), {})
    assert model.count_tokens(prompt) == len(encoded["input_ids"][0])
    assert prompt.count("<imgpad>") == IMAGE_TOKENS and "OCR: " in prompt


async def test_sampling_and_stop_strings_apply(model: GotOcr2Model) -> None:
    sampled = await collect(model.generate(request(model, temperature=1.0, seed=3, max_tokens=10)))
    text = "".join(d.text for d in sampled)
    assert sampled[-1].tokens == 10 and text
    stop = text[len(text) // 2]  # the same seed gives the same text, cut before this character's first use
    again = await collect(model.generate(request(model, temperature=1.0, seed=3, max_tokens=10, stop=(stop,))))
    assert again[-1].finish_reason == "stop"
    assert "".join(d.text for d in again) == text[: text.index(stop)]


def test_the_user_text_selects_gots_task(model: GotOcr2Model) -> None:
    plain = model.render_chat(page(), {})
    assert model.render_chat(page("OCR"), {}) == model.render_chat(page("ocr:"), {}) == plain
    formatted = model.render_chat(page("format"), {})
    assert formatted != plain and "OCR with format: " in formatted
    assert model.render_chat(page(" OCR with format "), {}) == formatted
    assert model.count_tokens(formatted) == len(model.prompt_ids["format"])


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([ChatMessage(role="user", content="hello")], "is an OCR model: send the page as an image_url"),
        (page(images=2), "reads one image per request, got 2"),
        (page("translate this page into French"), "'format' for formatted OCR"),
    ],
)
def test_chats_gots_cannot_answer_are_400s(model: GotOcr2Model, messages: list[ChatMessage], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message) as caught:
        model.render_chat(messages, {})
    assert caught.value.param == "messages"


async def test_requests_without_a_readable_image_are_400s(model: GotOcr2Model) -> None:
    with pytest.raises(InvalidRequestError, match="could not be decoded"):
        await collect(model.generate(request(model, image=b"\x89PNG not an image")))
    with pytest.raises(InvalidRequestError, match="is an OCR model"):
        await collect(model.generate(request(model, images=())))
    with pytest.raises(InvalidRequestError, match="chat requests with an image"):
        await collect(model.generate(request(model, prompt="OCR: ", kind="completion")))


async def test_closing_the_stream_stops_generation(model: GotOcr2Model) -> None:
    before_cancelled, before_tokens = model.cancelled, model.tokens_generated
    stream = model.generate(request(model, max_tokens=400))
    got = [await anext(stream), await anext(stream)]
    await stream.aclose()
    assert model.cancelled == before_cancelled + 1 and all(d.finish_reason is None for d in got)
    await asyncio.sleep(0.5)
    # The generate() thread stopped at its next step: far fewer than the 400 tokens it was allowed.
    assert model.tokens_generated - before_tokens < 100


# -- the remote-code path (its chat() API; the real code needs the hub and CUDA) ------------------------------


class ChatLike:
    """Stands in for the remote code's ``chat(tokenizer, image_file, ocr_type)``: the real one cannot be
    fetched here. Records what it was given and answers a fixed text."""

    def __init__(self, answer: str) -> None:
        self.answer, self.seen = answer, []  # type: ignore[var-annotated]

    def chat(self, tokenizer: Any, image_file: str, ocr_type: str) -> str:
        self.seen.append((Path(image_file).read_bytes(), Path(image_file).parent, ocr_type))
        return self.answer


async def test_remote_chat_gets_the_image_as_a_file_in_the_cache_dir(model: GotOcr2Model, tmp_path: Path) -> None:
    stand_in = ChatLike("the quick brown fox jumps over the lazy dog")
    remote = GotOcr2RemoteModel(
        model=stand_in, tokenizer=model.tokenizer, options=TransformersOptions(cache_dir=str(tmp_path))
    )
    prompt = remote.render_chat(page("format"), {})
    assert prompt == remote_prompt("format") and prompt.count("<imgpad>") == got_ocr2_remote.IMAGE_TOKENS
    whole = await collect(
        remote.generate(
            GenerateRequest(request_id="r", prompt=prompt, max_tokens=1000, kind="chat", images=(tiny_png(),))
        )
    )
    [(data, folder, mode)] = stand_in.seen
    assert data == tiny_png() and folder == tmp_path / "got-ocr2-images" and mode == "format"
    assert os.listdir(folder) == []  # removed once chat() returned
    assert [(d.text, d.finish_reason) for d in whole] == [(stand_in.answer, "stop")]
    assert whole[0].tokens == remote.count_tokens(stand_in.answer)
    cut = await collect(
        remote.generate(GenerateRequest(request_id="r", prompt=prompt, max_tokens=3, kind="chat", images=(tiny_png(),)))
    )
    assert cut[0].finish_reason == "length" and cut[0].tokens == 3 and stand_in.answer.startswith(cut[0].text)
