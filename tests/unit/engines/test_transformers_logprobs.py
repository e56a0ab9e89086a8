"""logprobs/top_logprobs on the transformers engine (tiny random Llama): the scorer's numbers are the model's
own log-softmax at each generated position, and greedy tokens are the most likely ones."""

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


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransformersTextModel]:
    folder = build_tiny_llama(tmp_path_factory.mktemp("tiny-lp") / "m", seed=3)
    loaded = TransformersTextModel.load(str(folder), TransformersOptions(batch_size=4))
    yield loaded
    loaded.close()


async def run(model: TransformersTextModel, top: int | None, **kw: object) -> tuple[list[TokenLogprob], int]:
    request = GenerateRequest(request_id="lp", prompt="the quick brown", max_tokens=8, temperature=0.0,
                              kind="completion", logprobs=top, **kw)  # type: ignore[arg-type]
    found: list[TokenLogprob] = []
    tokens = 0
    async for delta in model.generate(request):
        found += delta.logprobs
        tokens = delta.tokens or tokens
    return found, tokens


async def test_logprobs_are_the_models_distribution(model: TransformersTextModel) -> None:
    import torch

    found, tokens = await run(model, 3)
    assert len(found) == tokens > 0
    for entry in found:
        assert entry.logprob <= 0 and len(entry.top) == 3
        assert entry.top[0] == (entry.token, pytest.approx(entry.logprob))  # greedy picks the most likely
        assert [lp for _, lp in entry.top] == sorted((lp for _, lp in entry.top), reverse=True)
    # Reference: transformers' own greedy generate() (the engine reproduces its tokens), then one forward over
    # prompt + generated tokens.
    prompt = model._encode("the quick brown")
    with torch.no_grad():
        out = model.model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                                   eos_token_id=model.eos_ids)
    generated = [int(t) for t in out[0][len(prompt):] if int(t) not in model.eos_ids]
    assert [e.token for e in found] == [model.tokenizer.decode([t]) for t in generated]
    with torch.no_grad():
        logits = model.model(torch.tensor([prompt + generated])).logits[0].float()
    expected = torch.log_softmax(logits, dim=-1)
    for j, entry in enumerate(found):
        assert entry.logprob == pytest.approx(float(expected[len(prompt) - 1 + j, generated[j]]), abs=1e-4)


async def test_no_logprobs_unless_asked_and_zero_alternatives(model: TransformersTextModel) -> None:
    none, _ = await run(model, None)
    assert none == []
    bare, tokens = await run(model, 0)
    assert len(bare) == tokens and all(e.top == () for e in bare)
