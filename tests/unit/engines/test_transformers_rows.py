"""Per-request sampling inside transformers' continuous batching (tiny random Llama, real manager): each row's
own temperature, per-request seeds (``transformers_rows``), and logprobs read off the batch's own logits —
alone, beside other rows, and through the scorer fallback that pauses the batch."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("transformers")

from xinfd_engines.transformers_model import TransformersOptions, TransformersTextModel
from xinfd_engines.transformers_rows import BatchRowHooks

from tests.unit.engines.tiny_models import build_tiny_llama
from xinfd.errors import InvalidRequestError
from xinfd.types import GenerateRequest, TokenLogprob

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning"),
    pytest.mark.asyncio(loop_scope="module"),
]

PROMPT = "the quick brown"
# The token ids each logprobs entry was built for, per request (asyncio tasks and to_thread copy the context).
ENTRY_IDS: contextvars.ContextVar[list[int]] = contextvars.ContextVar("entry_ids")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransformersTextModel]:
    folder = build_tiny_llama(tmp_path_factory.mktemp("tiny-rows") / "m", seed=5)
    options = TransformersOptions(batch_size=8, batch_interval=0.05, batching="continuous")  # hooks of that path
    loaded = TransformersTextModel.load(str(folder), options)
    yield loaded
    loaded.close()


@pytest.fixture
def widest_batch(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records how many rows with a new token each batch step had, to prove requests really shared a step."""
    sizes: list[int] = []
    original = BatchRowHooks.rows_of_batch

    def recording(self: BatchRowHooks, requests_in_batch: list[Any]) -> None:
        original(self, requests_in_batch)
        sizes.append(len(self._order))

    monkeypatch.setattr(BatchRowHooks, "rows_of_batch", recording)
    return sizes


@pytest.fixture(autouse=True)
def entry_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    from xinfd_engines import transformers_logprobs, transformers_model

    original = transformers_logprobs.token_entry

    def recording(row: Any, token: int, top: int, tokenizer: Any) -> TokenLogprob:
        ENTRY_IDS.get().append(token)
        return original(row, token, top, tokenizer)

    monkeypatch.setattr(transformers_model, "token_entry", recording)
    monkeypatch.setattr(transformers_logprobs, "token_entry", recording)


async def run(model: TransformersTextModel, **kw: Any) -> tuple[str, list[TokenLogprob], list[int]]:
    """Text, logprobs entries and the token ids of those entries, of one request."""
    request = GenerateRequest(
        request_id="row", prompt=kw.pop("prompt", PROMPT), max_tokens=kw.pop("max_tokens", 16), kind="completion", **kw
    )
    ids: list[int] = []
    ENTRY_IDS.set(ids)
    text, found = "", []
    async for delta in model.generate(request):
        text += delta.text
        found += delta.logprobs
    return text, found, ids


def test_the_hooks_are_attached(model: TransformersTextModel) -> None:
    assert model.path == "continuous_batching" and model.rows is not None


async def test_a_greedy_row_beside_a_hot_row_keeps_its_own_temperature(
    model: TransformersTextModel, widest_batch: list[int]
) -> None:
    solo = (await run(model, temperature=0.0))[0]
    greedy, hot, hot_again = await asyncio.gather(
        run(model, temperature=0.0),
        run(model, temperature=3.0, seed=11),
        run(model, temperature=3.0, seed=11),
    )
    assert max(widest_batch) == 3  # all three were decoded in the same steps
    assert greedy[0] == solo  # a batch-wide temperature would have made the greedy row wander
    assert hot[0] == hot_again[0] != solo  # the hot rows really sampled (same seed: same draws)


async def test_the_same_seed_gives_the_same_tokens_alone_or_in_a_batch(
    model: TransformersTextModel, widest_batch: list[int]
) -> None:
    alone = (await run(model, temperature=1.0, seed=1234))[0]
    again = (await run(model, temperature=1.0, seed=1234))[0]
    crowded = await asyncio.gather(
        run(model, temperature=1.0, seed=1234),
        *(run(model, temperature=1.0, prompt=f"hello world {i}") for i in range(3)),
    )
    other = (await run(model, temperature=1.0, seed=99))[0]
    assert max(widest_batch) == 4
    assert alone == again == crowded[0][0]
    assert other != alone


def reference_logprobs(model: TransformersTextModel, prompt: str, generated: list[int]) -> Any:
    import torch

    ids = model._encode(prompt)
    with torch.no_grad():
        logits = model.model(torch.tensor([ids + generated])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)[len(ids) - 1 :]


async def test_logprobs_of_rows_sharing_a_batch_are_each_their_own_distribution(
    model: TransformersTextModel, widest_batch: list[int]
) -> None:
    prompts = [PROMPT, "hello world, how", "a small model"]
    results = await asyncio.gather(
        *(run(model, prompt=p, temperature=0.8, seed=i, logprobs=2, max_tokens=10) for i, p in enumerate(prompts))
    )
    assert max(widest_batch) == 3
    for prompt, (_, found, generated) in zip(prompts, results, strict=True):
        assert found and len(found) == len(generated)
        expected = reference_logprobs(model, prompt, generated)
        for j, entry in enumerate(found):
            assert entry.logprob == pytest.approx(float(expected[j, generated[j]]), abs=1e-4)
            assert [lp for _, lp in entry.top] == pytest.approx(expected[j].topk(2).values.tolist(), abs=1e-4)


async def test_without_hooks_logprobs_pause_the_batch_and_seeds_are_refused(
    model: TransformersTextModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a replica running CUDA graphs / torch.compile does (the step's Python hooks would not run there).
    monkeypatch.setattr(model, "rows", None)
    paused = 0
    original = type(model.manager).pause

    def counting(manager: Any) -> Any:
        nonlocal paused
        paused += 1
        return original(manager)

    monkeypatch.setattr(type(model.manager), "pause", counting)
    _, found, generated = await run(model, temperature=0.0, logprobs=1, max_tokens=8)
    assert found and len(found) == len(generated) and paused > 0
    expected = reference_logprobs(model, PROMPT, generated)
    for j, entry in enumerate(found):
        assert entry.logprob == pytest.approx(float(expected[j, generated[j]]), abs=1e-4)
    with pytest.raises(InvalidRequestError, match="seed"):
        await run(model, temperature=1.0, seed=3)
