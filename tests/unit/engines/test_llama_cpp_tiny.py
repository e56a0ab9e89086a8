"""The llama.cpp engine on the tiny random Llama written as GGUF (``tiny_gguf``): no download, loads in
milliseconds. llama.cpp must agree with transformers on the same weights (tokenization, greedy tokens, the
rendered chat template); then chat, the ``<think>`` split, stop strings, ``max_tokens``, errors and closing the
stream through ``LlamaCppModel``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from xinfd_engines import llama_cpp as engine

from tests.unit.engines.tiny_gguf import tiny_llama_gguf
from xinfd.errors import InvalidRequestError
from xinfd.types import ChatMessage, GenerateRequest

pytestmark = pytest.mark.usefixtures("llama_cpp_available")

USER = [ChatMessage(role="user", content="the quick brown fox")]
TEXTS = [
    "hello world, how are you today? I am fine, thank you.",
    "<s>user: hi\n<s>assistant:<think>\n\n</think>\n\n",  # special and added tokens inside text
    "  leading spaces\n\n\ttabs, ünïcödé 日本語 1234567 don't </s>",
]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(Hugging Face folder, GGUF file) of the tiny Llama with the plain template."""
    return tiny_llama_gguf(tmp_path_factory.mktemp("tiny-plain"))


@pytest.fixture(scope="module")
def think(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same weights with the Qwen3-style thinking template."""
    return tiny_llama_gguf(tmp_path_factory.mktemp("tiny-think"), think_template=True)


@pytest.fixture(scope="module")
def hf(plain: tuple[Path, Path]) -> tuple[Any, Any]:
    """transformers' tokenizer and model over the Hugging Face folder (the reference)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(plain[0]), AutoModelForCausalLM.from_pretrained(plain[0])


def load(gguf: Path, **options: str) -> engine.LlamaCppModel:
    return engine.LlamaCppModel.load(str(gguf), {"n_ctx": "1024", **options})


def hf_greedy(hf: tuple[Any, Any], prompt_ids: list[int], new_tokens: int) -> list[int]:
    import torch

    _, model = hf
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=new_tokens, do_sample=False)
    return [int(t) for t in out[0, len(prompt_ids) :]]


async def collect(model: engine.LlamaCppModel, prompt: str, **fields: Any) -> tuple[str, str, str | None]:
    """Run one request to the end; return (content, reasoning, finish_reason)."""
    values: dict[str, Any] = {"max_tokens": 12, "temperature": 0.0, "kind": "chat", **fields}
    request = GenerateRequest(request_id="t", prompt=prompt, **values)
    text, reasoning, reason = "", "", None
    async for delta in model.generate(request):
        text += delta.text
        reasoning += delta.reasoning
        reason = delta.finish_reason
    return text, reasoning, reason


def test_tiny_gguf_loads_fast_and_matches_transformers(
    plain: tuple[Path, Path], hf: tuple[Any, Any], record_property: Any
) -> None:
    from llama_cpp import Llama

    started = time.perf_counter()
    llm = Llama(model_path=str(plain[1]), n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False)
    seconds = time.perf_counter() - started
    record_property("tiny_gguf_load_seconds", round(seconds, 4))  # information only, not asserted
    print(f"tiny GGUF loaded in {seconds * 1000:.1f} ms")
    tokenizer, _ = hf
    for text in TEXTS:
        assert list(llm.tokenize(text.encode(), add_bos=True, special=True)) == tokenizer(text)["input_ids"]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "the quick brown fox"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(prompt)["input_ids"]
    assert list(llm.tokenize(prompt.encode(), add_bos=True, special=True)) == ids
    greedy: list[int] = []
    for token in llm.generate(ids, temp=0.0):
        greedy.append(int(token))
        if len(greedy) == 20:
            break
    assert greedy == hf_greedy(hf, ids, 20)


async def test_chat_matches_transformers_text(plain: tuple[Path, Path], hf: tuple[Any, Any]) -> None:
    model = load(plain[1])
    tokenizer, _ = hf
    prompt = model.render_chat(USER, {})
    turns = [{"role": "user", "content": "the quick brown fox"}]
    assert prompt == tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert not model.parse_reasoning
    assert model.count_tokens(prompt) == len(tokenizer(prompt)["input_ids"])  # the template's <s>: no extra BOS
    text, reasoning, reason = await collect(model, prompt, max_tokens=12)
    expected = tokenizer.decode(hf_greedy(hf, tokenizer(prompt)["input_ids"], 12), skip_special_tokens=True)
    assert (text, reasoning, reason) == (expected, "", "length")
    assert "\ufffd" in text  # stray byte tokens decode as U+FFFD, as transformers decodes them
    assert model.tokens_generated == 12  # max_tokens exactly, counted in tokens (not in stream chunks)
    last = [d async for d in model.generate(GenerateRequest(request_id="u", prompt=prompt, max_tokens=12,
                                                            temperature=0.0, kind="chat"))][-1]
    assert last.tokens == 12  # what usage.completion_tokens reports (re-tokenizing the text would not give 12)


async def test_thinking_split_and_enable_thinking(think: tuple[Path, Path]) -> None:
    model = load(think[1])
    assert model.parse_reasoning  # the GGUF's template mentions </think>
    thinking, plain = model.render_chat(USER, {}), model.render_chat(USER, {"enable_thinking": False})
    assert thinking.endswith("<think>\n") and plain.endswith("</think>\n\n")
    text, reasoning, _ = await collect(model, thinking)
    assert reasoning and not text  # a random model never closes the block: all of it is reasoning
    text, reasoning, _ = await collect(model, plain)
    assert text and not reasoning
    # Text completions keep the tags and split nothing.
    text, reasoning, _ = await collect(model, thinking, kind="completion")
    assert text and not reasoning
    # The launch option sets the template's default; a request may still turn thinking back on.
    off = load(think[1], enable_thinking="false")
    assert off.render_chat(USER, {}) == plain
    assert off.render_chat(USER, {"enable_thinking": True}) == thinking


async def test_stop_string_ends_the_stream_early(plain: tuple[Path, Path]) -> None:
    """Regression: create_completion(stream=True) yielded nothing while its pending tokens were not valid
    UTF-8 (this model emits a lone continuation byte as its second token), so a stop string was only seen
    once all ``max_tokens`` were generated. Now text arrives token by token and the stop ends generation."""
    model = load(plain[1], n_ctx="4096")
    prompt = model.render_chat(USER, {})
    full, _, _ = await collect(model, prompt, max_tokens=40)
    stop = full[15:18]
    before = model.tokens_generated
    text, _, reason = await collect(model, prompt, max_tokens=3000, stop=(stop,))
    assert (text, reason) == (full[: full.index(stop)], "stop")
    await asyncio.sleep(0.1)  # let the thread notice the closed stream
    # The thread runs ahead of the reader by however long the reader waits for a CPU: a loose bound.
    assert model.tokens_generated - before < 1000


async def test_max_tokens_and_the_context_clamp(plain: tuple[Path, Path]) -> None:
    model = load(plain[1])
    prompt = model.render_chat(USER, {})
    text, _, reason = await collect(model, prompt, max_tokens=1)
    assert text and reason == "length"
    # A prompt that fills the context leaves room for what fits: the budget is clamped to n_ctx.
    small = load(plain[1], n_ctx="64")
    long_prompt = prompt + " the quick brown fox" * 4  # 56 of the 64 tokens
    room = 64 - small.count_tokens(long_prompt)
    assert 0 < room < 12
    before = small.tokens_generated
    _, _, reason = await collect(small, long_prompt, max_tokens=12)
    assert reason == "length" and small.tokens_generated - before == room


async def test_prompt_longer_than_n_ctx_is_an_error(plain: tuple[Path, Path]) -> None:
    """Regression: the exception raised in the generating thread was dropped, and the client got an empty
    answer with finish_reason "length"; it now reaches the caller (the worker host answers with an error)."""
    model = load(plain[1], n_ctx="32")
    with pytest.raises(ValueError, match=r"n_ctx\) is 32"):
        await collect(model, "the quick brown fox " * 20)
    # The worker host checks prompts against this first, so through the API the same prompt is a 400.
    assert model.context_window == 32


async def test_closing_the_stream_stops_generation(plain: tuple[Path, Path]) -> None:
    model = load(plain[1], n_ctx="4096")
    gen = model.generate(
        GenerateRequest(
            request_id="c", prompt="the quick brown fox", max_tokens=4000, temperature=1.0, seed=1, kind="chat"
        )
    )
    async for _ in gen:
        break
    await gen.aclose()  # type: ignore[attr-defined,unused-ignore]
    at_close = model.tokens_generated
    await asyncio.sleep(0.3)
    # At most the token being computed when the stream closed; nowhere near the 4000 asked for.
    assert model.tokens_generated - at_close <= 1
    assert model.tokens_generated < 4000
    # The model serves the next request normally.
    _, _, reason = await collect(model, model.render_chat(USER, {}), max_tokens=3)
    assert reason == "length"


async def test_requests_run_one_at_a_time_with_the_same_result(plain: tuple[Path, Path]) -> None:
    model = load(plain[1])
    prompt = model.render_chat(USER, {})
    alone = await collect(model, prompt)
    together = await asyncio.gather(*(collect(model, prompt) for _ in range(3)))
    assert together == [alone] * 3


def test_threads_bound_prompt_processing_too(plain: tuple[Path, Path]) -> None:
    """Regression: only ``n_threads`` was passed, so prompts were processed on every CPU (llama-cpp-python's
    ``n_threads_batch`` default) whatever the launch option or OMP_NUM_THREADS said."""
    model = load(plain[1], n_threads="1")
    assert (model.llm.n_threads, model.llm.n_threads_batch) == (1, 1)


async def test_embeddings_are_pooled_per_input_and_normalised(plain: tuple[Path, Path]) -> None:
    """An embed-only family on llama.cpp: one vector per input (mean-pooled: the tiny Llama declares no pooling),
    L2-normalised unless ``normalize=false``; the same text gives the same vector whatever its batch."""
    import math

    from xinfd_engines.llama_cpp_model import LlamaCppEmbedder

    embedder = LlamaCppEmbedder.load(str(plain[1]), {"n_ctx": "256"})
    a, b, again = await embedder.embed(["the quick brown fox", "hello world", "the quick brown fox"])
    assert len(a) == len(b) == 64  # the tiny model's hidden size
    assert math.isclose(math.fsum(x * x for x in a), 1.0, rel_tol=1e-4)
    assert again == pytest.approx(a, abs=1e-5) and a != pytest.approx(b, abs=1e-3)
    [alone] = await embedder.embed(["the quick brown fox"])
    assert alone == pytest.approx(a, abs=1e-5)
    assert embedder.count_tokens("the quick brown fox") >= 2
    raw = LlamaCppEmbedder.load(str(plain[1]), {"n_ctx": "256", "normalize": "false", "pooling": "last"})
    [vector] = await raw.embed(["the quick brown fox"])
    assert not math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-3)


def test_embedding_options_are_checked_at_launch() -> None:
    from tests.unit.engines.conftest import launch, make_model, make_replica

    spec = make_model(name="e", abilities=("embed",), engines=("llama.cpp",), extra={"model_path": "/m/e.gguf"})
    assert engine.embeds_only(spec)
    with pytest.raises(InvalidRequestError, match="'pooling' must be one of"):
        launch(engine, spec, make_replica(engine="llama.cpp", options={"pooling": "none"}))
    with pytest.raises(InvalidRequestError, match="'normalize' must be true or false"):
        launch(engine, spec, make_replica(engine="llama.cpp", options={"normalize": "2"}))
