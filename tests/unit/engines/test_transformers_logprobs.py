"""logprobs/top_logprobs on the transformers engine (tiny random Llama): the numbers the batch step copies are the
model's own log-softmax at each generated position (a plain forward over prompt + output, to 1e-4), and greedy
tokens are the most likely ones. This once failed about every other run, while a second forward ran beside the
batch step (transformers_rows explains why)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("transformers")

from xinfd_engines.transformers_model import TransformersOptions, TransformersTextModel

from tests.unit.engines.tiny_models import build_tiny_llama
from xinfd.types import GenerateRequest, TokenLogprob

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning"),
    pytest.mark.asyncio(loop_scope="module"),
]


@pytest.fixture(scope="module", params=["continuous", "static"])  # both batching paths copy raw rows
def model(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[TransformersTextModel]:
    folder = build_tiny_llama(tmp_path_factory.mktemp("tiny-lp") / "m", seed=3)
    loaded = TransformersTextModel.load(str(folder), TransformersOptions(batch_size=4, batching=request.param))
    yield loaded
    loaded.close()


async def run(model: TransformersTextModel, top: int | None, **kw: object) -> tuple[list[TokenLogprob], int]:
    request = GenerateRequest(
        request_id="lp", prompt="the quick brown", max_tokens=8, temperature=0.0, kind="completion", logprobs=top, **kw
    )  # type: ignore[arg-type]
    found: list[TokenLogprob] = []
    tokens = 0
    async for delta in model.generate(request):
        found += delta.logprobs
        tokens = delta.tokens or tokens
    return found, tokens


async def test_logprobs_are_the_models_distribution(
    model: TransformersTextModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from xinfd_engines import transformers_model

    scored_ids: list[int] = []
    original = transformers_model.token_entry

    def recording(row: object, token: int, top: int, tokenizer: object) -> TokenLogprob:
        scored_ids.append(token)
        return original(row, token, top, tokenizer)

    monkeypatch.setattr(transformers_model, "token_entry", recording)
    found, tokens = await run(model, 3)
    assert len(found) == tokens == len(scored_ids) > 0
    assert [e.token for e in found] == [model.tokenizer.decode([t]) for t in scored_ids]
    for entry in found:
        assert entry.logprob <= 0 and len(entry.top) == 3
        assert [lp for _, lp in entry.top] == sorted((lp for _, lp in entry.top), reverse=True)
        # Greedy picks the most likely token (up to the batch's own float rounding on near ties).
        assert entry.logprob >= entry.top[0][1] - 1e-3
    # Reference: one plain forward over prompt + generated tokens.
    prompt = model._encode("the quick brown")
    with torch.no_grad():
        logits = model.model(torch.tensor([prompt + scored_ids])).logits[0].float()
    expected = torch.log_softmax(logits, dim=-1)
    for j, entry in enumerate(found):
        assert entry.logprob == pytest.approx(float(expected[len(prompt) - 1 + j, scored_ids[j]]), abs=1e-4)
        top_ids = torch.topk(expected[len(prompt) - 1 + j], 3).indices.tolist()
        assert [alt for alt, _ in entry.top] == [model.tokenizer.decode([t]) for t in top_ids]


async def test_no_logprobs_unless_asked_and_zero_alternatives(model: TransformersTextModel) -> None:
    none, _ = await run(model, None)
    assert none == []
    bare, tokens = await run(model, 0)
    assert len(bare) == tokens and all(e.top == () for e in bare)
