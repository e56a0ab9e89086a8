"""The transformers engine's ``generate()`` path (releases without continuous batching, e.g. 4.37.2 in a model
venv), forced here on the installed transformers: same deltas, stop strings, usage and cancellation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest

pytest.importorskip("transformers")

from xinfd_engines import transformers_model
from xinfd_engines.transformers_model import TransformersOptions, TransformersTextModel, dtype_keyword

from tests.unit.engines.test_transformers_engine import collect, reference_greedy
from tests.unit.engines.tiny_models import build_tiny_llama
from xinfd.types import GenerateRequest

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning"),
    pytest.mark.asyncio(loop_scope="module"),
]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransformersTextModel]:
    folder = build_tiny_llama(tmp_path_factory.mktemp("tiny-gen") / "m", think_template=True)
    patch = pytest.MonkeyPatch()
    patch.setattr(transformers_model, "has_continuous_batching", lambda model: False)
    options = TransformersOptions(batch_size=4, enable_thinking=True, batching="threads")  # auto: static batches
    loaded = TransformersTextModel.load(str(folder), options)
    patch.undo()
    yield loaded
    loaded.close()


def test_the_path_is_generate_without_a_manager(model: TransformersTextModel) -> None:
    assert model.path == "generate" and model.manager is None and model.threaded is not None


async def test_greedy_matches_generate_and_counts_exact_tokens(model: TransformersTextModel) -> None:
    text, _, _ = await collect(model, "hello world", kind="completion", max_tokens=12)
    assert text == reference_greedy(model, "hello world", 12)
    last = None
    async for delta in model.generate(
        GenerateRequest(request_id="u", prompt="hello world", max_tokens=7, temperature=0.0, kind="completion")
    ):
        last = delta
    assert last is not None and last.finish_reason in ("stop", "length")
    if last.finish_reason == "length":
        assert last.tokens == 7


async def test_concurrent_requests_each_get_their_own_answer(model: TransformersTextModel) -> None:
    alone = await collect(model, "the quick", kind="completion", max_tokens=10)
    together = await asyncio.gather(*(collect(model, "the quick", kind="completion", max_tokens=10) for _ in range(3)))
    assert all(result == alone for result in together)


async def test_the_same_seed_gives_the_same_tokens_even_beside_other_sampling_requests(
    model: TransformersTextModel,
) -> None:
    def sampled(seed: int | None, prompt: str = "the quick") -> Coroutine[Any, Any, tuple[str, str, str | None]]:
        return collect(model, prompt, kind="completion", max_tokens=16, temperature=1.0, top_p=0.9, seed=seed)

    alone = await sampled(1234)
    crowded = await asyncio.gather(sampled(1234), sampled(None, "hello"), sampled(None, "a small"), sampled(1234))
    assert crowded[0] == crowded[3] == alone  # the others drew from the global generator meanwhile
    assert await sampled(99) != alone


async def test_stop_string_and_cancel(model: TransformersTextModel) -> None:
    full, _, _ = await collect(model, "hello world", kind="completion")
    stop = full[5:8]
    text, _, reason = await collect(model, "hello world", kind="completion", stop=(stop,))
    assert reason == "stop" and stop not in text and full.startswith(text)
    before = model.cancelled
    gen = model.generate(
        GenerateRequest(request_id="c", prompt="hello", max_tokens=400, temperature=1.0, kind="completion")
    )
    async for _ in gen:
        break
    await gen.aclose()  # type: ignore[attr-defined]
    assert model.cancelled == before + 1
    for _ in range(50):  # its generate() thread stops at the next step, far before 400 tokens
        if not any(t.name == "xinfd-generate-c" for t in threading.enumerate()):
            break
        await asyncio.sleep(0.1)
    assert not any(t.name == "xinfd-generate-c" for t in threading.enumerate())


def test_dtype_keyword_follows_the_release() -> None:
    assert dtype_keyword("4.37.2") == "torch_dtype"
    assert dtype_keyword("4.56.0") == "dtype"
    assert dtype_keyword("5.17.0.dev0") == "dtype"
