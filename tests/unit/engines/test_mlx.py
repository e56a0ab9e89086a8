"""The mlx engine on the Linux CPU backend (mlx-lm[cpu]): the tiny random Llama of the transformers tests,
greedy tokens equal to transformers' generate(), batching, aborts; and the availability reasons."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from xinfd_engines import mlx as engine

from tests.unit.engines.conftest import launch, make_model, make_platform, make_replica
from tests.unit.engines.tiny_models import build_tiny_llama
from xinfd.errors import InvalidRequestError
from xinfd.types import GenerateRequest

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning"),
    pytest.mark.asyncio(loop_scope="module"),
]


def test_availability_reasons() -> None:
    spec = make_model(name="m", engines=("mlx",), extra={})
    windows = engine.ENGINE.availability(spec, make_platform(system="Windows"))
    assert windows is not None and not windows.available and "macOS" in windows.reason
    intel = engine.ENGINE.availability(spec, make_platform(system="Darwin", machine="x86_64"))
    assert intel is not None and "Apple silicon" in intel.reason
    linux = engine.ENGINE.availability(spec, make_platform(gpus=()))
    assert linux is not None and linux.available  # packages come from the model venv
    deps = engine.ENGINE.dependencies()
    assert deps is not None and any("mlx-lm[cpu]" in d and "linux" in d for d in deps)
    with pytest.raises(InvalidRequestError, match="unknown launch option"):
        launch(engine, make_model(engines=("mlx",), extra={"model_path": "/x"}),
            make_replica(engine="mlx", options={"temperature": 1}),
        )


pytest.importorskip("mlx_lm")
pytest.importorskip("transformers")

from xinfd_engines.mlx_model import MlxTextModel  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-mlx") / "m")


@pytest.fixture(scope="module")
def model(tiny_dir: Path) -> Iterator[MlxTextModel]:
    yield MlxTextModel(str(tiny_dir), batch_size=8, enable_thinking=None)


async def collect(model: MlxTextModel, prompt: str, max_tokens: int = 20) -> tuple[str, str | None]:
    request = GenerateRequest(
        request_id="r", prompt=prompt, max_tokens=max_tokens, temperature=0.0, kind="completion"
    )
    text, reason = "", None
    async for delta in model.generate(request):
        text += delta.text
        reason = delta.finish_reason
    return text, reason


async def test_greedy_matches_transformers_and_batches(model: MlxTextModel, tiny_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt = "the quick brown fox"
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    reference = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    out = reference.generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    expected = tokenizer.decode(out[0][ids.shape[1] :], skip_special_tokens=True)
    alone = await collect(model, prompt)
    batch = await asyncio.gather(*(collect(model, prompt) for _ in range(5)))
    assert alone[0] == expected
    assert {b[0] for b in batch} == {expected}


async def test_abort_removes_the_sequence(model: MlxTextModel) -> None:
    request = GenerateRequest(request_id="c", prompt="hello", max_tokens=500, temperature=1.0, kind="completion")
    gen = model.generate(request)
    async for _ in gen:
        break
    await gen.aclose()  # type: ignore[attr-defined]
    await asyncio.sleep(0.2)
    produced = model.tokens_generated
    await asyncio.sleep(0.3)
    assert model.tokens_generated == produced
    assert (await collect(model, "hello", 5))[1] is not None
