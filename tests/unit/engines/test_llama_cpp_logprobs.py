"""logprobs/top_logprobs on the llama.cpp engine (tiny random Llama as GGUF): each token's number is the
log-softmax of the logits it was sampled from, so greedy tokens are the most likely ones, and it agrees with
transformers on the same weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from xinfd_engines import llama_cpp_model as engine

from tests.unit.engines.tiny_gguf import tiny_llama_gguf
from xinfd.types import GenerateRequest, TokenLogprob

pytestmark = [pytest.mark.usefixtures("llama_cpp_available"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_llama_gguf(tmp_path_factory.mktemp("tiny-lp-gguf"))


async def run(model: engine.LlamaCppModel, top: int | None) -> tuple[str, list[TokenLogprob], int]:
    request = GenerateRequest(request_id="lp", prompt="the quick brown", max_tokens=8, temperature=0.0,
                              kind="completion", logprobs=top)
    text, found, tokens = "", [], 0
    async for delta in model.generate(request):
        text += delta.text
        found += delta.logprobs
        tokens = delta.tokens or tokens
    return text, found, tokens


async def test_logprobs_match_the_model(tiny: tuple[Path, Path]) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = engine.LlamaCppModel.load(str(tiny[1]), {"n_ctx": "256"})
    text, found, tokens = await run(model, 2)
    assert len(found) == tokens > 0 and "".join(e.token for e in found) == text
    for entry in found:
        assert entry.logprob <= 0 and len(entry.top) == 2
        assert entry.top[0][0] == entry.token and entry.top[0][1] == pytest.approx(entry.logprob)
    # The same weights in transformers: the first generated token's logprob agrees (f32 GGUF, tiny model).
    hf: Any = AutoModelForCausalLM.from_pretrained(tiny[0])
    prompt = model._encode("the quick brown")
    with torch.no_grad():
        logits = hf(torch.tensor([prompt])).logits[0, -1].float()
    first = model.llm.tokenize(found[0].token.encode(), add_bos=False, special=True)
    expected = float(torch.log_softmax(logits, dim=-1)[first[0]])
    assert found[0].logprob == pytest.approx(expected, abs=1e-2)
    _, none, _ = await run(model, None)
    assert none == []
