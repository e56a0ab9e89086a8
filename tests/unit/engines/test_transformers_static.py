"""The transformers engine's padded static-batch path (``transformers_static``) on a tiny random Llama: greedy
tokens equal ``generate()``'s alone and left-padded beside prompts of other lengths, exact ``max_tokens``, EOS,
closed iterators, seeds, stop strings; and which path ``batching=auto`` takes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from xinfd_engines.transformers_model import TransformersOptions, TransformersTextModel, choose_path
from xinfd_engines.transformers_rows import row_plan
from xinfd_engines.transformers_static import StaticBatcher

from tests.unit.engines.test_transformers_engine import collect
from tests.unit.engines.tiny_models import build_tiny_llama
from xinfd.errors import InvalidRequestError
from xinfd.types import GenerateRequest

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning"),
    pytest.mark.asyncio(loop_scope="module"),
]

PROMPTS = ("hello", "the quick brown fox jumps over", "a small model for tests answers with", "hi")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-static") / "m", think_template=True)


@pytest.fixture(scope="module")
def model(tiny_dir: Path) -> Iterator[TransformersTextModel]:
    options = TransformersOptions(batch_size=4, enable_thinking=True, batching="static")
    loaded = TransformersTextModel.load(str(tiny_dir), options)
    yield loaded
    loaded.close()


@pytest.fixture
def batcher(model: TransformersTextModel, request: pytest.FixtureRequest) -> Iterator[StaticBatcher]:
    """A batcher of its own on the model's weights, with the end-of-sequence ids a test chooses (none by
    default, so every row runs to its ``max_tokens``)."""
    marker = request.node.get_closest_marker("eos")
    made = StaticBatcher(
        model=model.model, eos_ids=list(marker.args) if marker else [], batch_size=4, batch_interval=0.0
    )
    yield made
    made.close()


def reference_ids(model: TransformersTextModel, prompt: str, n: int, eos: list[int] | None = None,
                  **generate: Any) -> list[int]:
    """transformers' own greedy generate() for one unpadded prompt: the token ids a row must reproduce."""
    import torch

    ids = torch.tensor([model._encode(prompt)])
    out = model.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        min_new_tokens=0 if eos else n,
        do_sample=False,
        eos_token_id=eos or None,
        pad_token_id=0,
        **generate,
    )
    return [int(t) for t in out[0][ids.shape[1] :]]


def request(prompt: str, max_tokens: int = 16, **kw: Any) -> GenerateRequest:
    return GenerateRequest(
        request_id="s",
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=kw.pop("temperature", 0.0),
        kind=kw.pop("kind", "completion"),
        **kw,
    )


async def ids_of(
    batcher: StaticBatcher, model: TransformersTextModel, prompt: str, max_tokens: int = 16, **kw: Any
) -> list[int]:
    """The token ids the batcher streams for ``prompt``, checking they arrive cumulative and end finished."""
    seed = kw.pop("seed", None)
    last: list[int] = []
    finished = False
    plan = row_plan(logprobs=False, seed=seed)
    source = batcher.tokens(model._encode(prompt), request(prompt, max_tokens, **kw), plan)
    async for tokens, done in source:
        assert tokens[: len(last)] == last and not finished
        last, finished = tokens, done
    assert finished
    return last


def test_the_launch_option_selects_the_static_path(model: TransformersTextModel) -> None:
    assert model.path == "static" and model.static is not None
    assert model.manager is None and model.threaded is None


async def test_one_row_equals_generate(batcher: StaticBatcher, model: TransformersTextModel) -> None:
    assert await ids_of(batcher, model, PROMPTS[1], 20) == reference_ids(model, PROMPTS[1], 20)


async def test_a_left_padded_batch_of_different_lengths_equals_generate_per_prompt(
    batcher: StaticBatcher, model: TransformersTextModel
) -> None:
    before = batcher.batches
    together = await asyncio.gather(*(ids_of(batcher, model, p, 20) for p in PROMPTS))
    assert batcher.batches == before + 1  # submitted in one loop turn: one padded batch
    assert len({len(model._encode(p)) for p in PROMPTS}) > 1
    assert together == [reference_ids(model, p, 20) for p in PROMPTS]


async def test_max_tokens_is_exact_per_row(batcher: StaticBatcher, model: TransformersTextModel) -> None:
    lengths = await asyncio.gather(*(ids_of(batcher, model, p, n) for p, n in zip(PROMPTS, (1, 3, 7, 12), strict=True)))
    assert [len(ids) for ids in lengths] == [1, 3, 7, 12]
    assert batcher.rows_dropped == 3  # the short rows left the batch's cache as they finished


async def test_eos_stops_its_row_and_the_others_continue(model: TransformersTextModel) -> None:
    long = reference_ids(model, PROMPTS[1], 20)
    eos = long[5]  # the sixth token this row generates becomes its end-of-sequence token
    other = PROMPTS[2]
    expected_other = reference_ids(model, other, 20, eos=[eos])
    batcher = StaticBatcher(model=model.model, eos_ids=[eos], batch_size=4, batch_interval=0.0)
    try:
        stopped, continued = await asyncio.gather(
            ids_of(batcher, model, PROMPTS[1], 20), ids_of(batcher, model, other, 20)
        )
    finally:
        batcher.close()
    assert stopped == long[: long.index(eos) + 1]  # ends with (and includes) the EOS token
    assert continued == expected_other and len(continued) > len(stopped)


async def test_a_closed_iterator_leaves_the_batch_while_the_others_continue(
    batcher: StaticBatcher, model: TransformersTextModel
) -> None:
    async def close_after_first(prompt: str) -> list[int]:
        gen: AsyncGenerator[tuple[list[int], bool], None] = batcher.tokens(
            model._encode(prompt), request(prompt, 400), None
        )
        async for tokens, _ in gen:
            await gen.aclose()
            return tokens
        raise AssertionError("no token")

    closed, full = await asyncio.gather(close_after_first(PROMPTS[0]), ids_of(batcher, model, PROMPTS[1], 300))
    assert len(closed) < 400
    assert full == reference_ids(model, PROMPTS[1], 300)
    assert batcher.rows_dropped == 1  # the closed row was dropped from the cache, long before its 400 tokens


async def test_the_same_seed_gives_the_same_tokens_alone_or_in_a_batch(model: TransformersTextModel) -> None:
    def sampled(seed: int | None, prompt: str = "the quick") -> Coroutine[Any, Any, tuple[str, str, str | None]]:
        return collect(model, prompt, kind="completion", max_tokens=16, temperature=1.0, top_p=0.9, seed=seed)

    alone = await sampled(1234)
    crowded = await asyncio.gather(sampled(1234), sampled(None, "hello"), sampled(None, "a small"), sampled(1234))
    assert crowded[0] == crowded[3] == alone
    assert await sampled(99) != alone


async def test_engine_deltas_stop_strings_usage_and_cancel(model: TransformersTextModel) -> None:
    full, _, _ = await collect(model, "hello world", kind="completion", max_tokens=24)
    stop = full[5:8]
    text, _, reason = await collect(model, "hello world", kind="completion", stop=(stop,))
    assert reason == "stop" and stop not in text and full.startswith(text)
    deltas = [d async for d in model.generate(request("hello", 9, kind="completion"))]
    if deltas[-1].finish_reason == "length":
        assert deltas[-1].tokens == 9
    else:  # ended by the end-of-sequence token, which is not counted
        assert deltas[-1].finish_reason == "stop" and (deltas[-1].tokens or 0) < 9
    before = model.cancelled
    gen = model.generate(request("hello", 400, temperature=1.0, kind="completion"))
    async for _ in gen:
        break
    await gen.aclose()  # type: ignore[attr-defined]
    assert model.cancelled == before + 1
    assert (await collect(model, "hello", kind="completion"))[2] is not None  # the next batch still serves


async def test_thinking_is_split_as_on_the_other_paths(model: TransformersTextModel) -> None:
    from xinfd.types import ChatMessage

    prompt = model.render_chat([ChatMessage(role="user", content="hello")], {})
    _, reasoning, reason = await collect(model, prompt, kind="chat", max_tokens=12)
    assert reasoning and reason is not None  # the prompt opened <think>: generation starts as reasoning


async def test_the_gathering_window_joins_later_arrivals_and_ends_when_the_batch_is_full(
    model: TransformersTextModel,
) -> None:
    # A window far longer than the test: it can only end because the second request fills the batch of two.
    batcher = StaticBatcher(model=model.model, eos_ids=[], batch_size=2, batch_interval=600.0)
    try:
        first = asyncio.ensure_future(ids_of(batcher, model, PROMPTS[0], 6))
        await asyncio.sleep(0.01)  # a later loop turn: not woken together with the first
        second = await ids_of(batcher, model, PROMPTS[1], 6)
        assert await first == reference_ids(model, PROMPTS[0], 6)
        assert second == reference_ids(model, PROMPTS[1], 6)
        assert batcher.batches == 1
    finally:
        batcher.close()


async def test_a_request_the_batch_cannot_take_fails_alone(
    batcher: StaticBatcher, model: TransformersTextModel
) -> None:
    with pytest.raises(InvalidRequestError, match="prompt is empty"):
        async for _ in batcher.tokens([], request("", 4), None):
            pass
    bad, good = await asyncio.gather(
        ids_of(batcher, model, PROMPTS[0], 8, temperature=1.0, top_p=-0.5),  # the top-p warper refuses it
        ids_of(batcher, model, PROMPTS[1], 8),
        return_exceptions=True,
    )
    assert isinstance(bad, ValueError) and "top_p" in str(bad)
    assert good == reference_ids(model, PROMPTS[1], 8)


def test_auto_takes_continuous_batching_on_cuda_and_static_batches_elsewhere() -> None:
    assert choose_path("auto", continuous_batching=True, cuda=False) == "static"
    assert choose_path("auto", continuous_batching=True, cuda=True) == "continuous_batching"
    assert choose_path("auto", continuous_batching=False, cuda=False) == "static"  # transformers < 5
    assert choose_path("auto", continuous_batching=False, cuda=True) == "static"
    assert choose_path("static", continuous_batching=True, cuda=True) == "static"
    assert choose_path("threads", continuous_batching=True, cuda=False) == "generate"
    assert choose_path("continuous", continuous_batching=True, cuda=False) == "continuous_batching"
    with pytest.raises(ValueError, match="batching=continuous needs"):
        choose_path("continuous", continuous_batching=False, cuda=False)


def test_the_batching_option_is_validated() -> None:
    assert TransformersOptions.from_launch({}).batching == "auto"
    assert TransformersOptions.from_launch({"batching": "static"}).batching == "static"
    with pytest.raises(ValueError, match="'batching' must be auto, continuous, static or threads"):
        TransformersOptions.from_launch({"batching": "dynamic"})


async def test_repetition_penalty_and_top_k_per_row(batcher: StaticBatcher, model: TransformersTextModel) -> None:
    """A row's repetition penalty changes its greedy tokens exactly as generate()'s does, beside a row without
    one in the same batch; top_k=1 sampling is the arg-max whatever the temperature."""
    plain, penalised = await asyncio.gather(
        ids_of(batcher, model, PROMPTS[1], 24),
        ids_of(batcher, model, PROMPTS[1], 24, repetition_penalty=5.0),
    )
    assert plain == reference_ids(model, PROMPTS[1], 24)
    assert penalised == reference_ids(model, PROMPTS[1], 24, repetition_penalty=5.0)
    assert penalised != plain  # the tiny model repeats itself: the penalty must show
    hot_top1 = await ids_of(batcher, model, PROMPTS[2], 12, temperature=5.0, top_k=1)
    assert hot_top1 == reference_ids(model, PROMPTS[2], 12)


def test_continuous_batching_steps_are_small_on_cpu() -> None:
    """The CB step budget sizes transformers' attention masks (memory): small on CPU, large on CUDA."""
    from xinfd_engines.transformers_model import continuous_batch_tokens

    assert continuous_batch_tokens(cuda=False) == 256
    assert continuous_batch_tokens(cuda=True) == 2048


async def test_a_request_closed_after_its_last_delta_is_not_counted_as_cancelled(model: TransformersTextModel) -> None:
    """The worker host closes the iterator as soon as it holds the delta with a finish_reason; such a request
    ended normally (it used to be counted, and logged, as cancelled: every request was)."""
    before = model.cancelled
    gen = model.generate(request(PROMPTS[1], 5))
    async for delta in gen:
        if delta.finish_reason is not None:
            break
    await gen.aclose()  # type: ignore[attr-defined]
    assert delta.finish_reason == "length" and model.cancelled == before


def test_the_window_after_a_batch_expects_the_clients_it_held(model: TransformersTextModel) -> None:
    """The decision alone: right after a batch, the window waits (up to four intervals, from the batch's end)
    for as many requests as the model held while it ran; a lone client's follow-up is never kept waiting; an
    idle model's first request gets one interval, closed by a full batch."""
    from xinfd_engines.transformers_static import _FOLLOW_UP_WINDOWS

    batcher = StaticBatcher(model=model.model, eos_ids=[], batch_size=8, batch_interval=0.003)
    try:
        first = type("Row", (), {"arrived": 10.0, "after_idle": True})()
        assert batcher._window(first, follow_up=False) == (8, 10.0, 0.003)  # nothing known yet
        batcher._last_peak, batcher._last_end = 5, 9.99
        enough, start, window = batcher._window(first, follow_up=True)
        assert (enough, start) == (5, 10.0) and window == 0.003 * _FOLLOW_UP_WINDOWS
        queued = type("Row", (), {"arrived": 9.5, "after_idle": False})()  # queued behind the last batch
        assert batcher._window(queued, follow_up=True)[:2] == (5, 9.99)  # counted from the batch's end
        batcher._last_peak = 1
        assert batcher._window(first, follow_up=True)[0] == 1  # one waiting request closes it at once
        batcher._last_peak = 40
        assert batcher._window(first, follow_up=True)[0] == 8  # never more than a batch
    finally:
        batcher.close()


async def test_a_straggling_client_joins_its_peers_next_batch(model: TransformersTextModel) -> None:
    """Two clients in a closed loop, one of them answering 1 s late: the follow-up window (4 x 0.5 s from the
    batch's end) waits for it, so they stay in one batch instead of splitting into two for good."""
    batcher = StaticBatcher(model=model.model, eos_ids=[], batch_size=4, batch_interval=0.5)
    try:
        await asyncio.gather(ids_of(batcher, model, PROMPTS[0], 3), ids_of(batcher, model, PROMPTS[1], 3))
        assert batcher.batches == 1

        async def late() -> list[int]:
            await asyncio.sleep(1.0)
            return await ids_of(batcher, model, PROMPTS[1], 3)

        _, late_ids = await asyncio.gather(ids_of(batcher, model, PROMPTS[0], 3), late())
        assert batcher.batches == 2, "the straggler was left for a batch of its own"
        assert late_ids == reference_ids(model, PROMPTS[1], 3)
    finally:
        batcher.close()


async def test_a_row_read_only_whole_is_posted_once_beside_a_streamed_row(
    batcher: StaticBatcher, model: TransformersTextModel
) -> None:
    """A non-streamed request without stop strings gets its tokens in one post when it ends (each post wakes
    the replica's loop, which takes the GIL from the batch); a streamed row of the same batch gets each step's."""

    async def posts(prompt: str, streamed: bool) -> list[tuple[list[int], bool]]:
        source = batcher.tokens(model._encode(prompt), request(prompt, 12, streamed=streamed), None)
        return [(list(tokens), done) async for tokens, done in source]

    before = batcher.batches
    whole, stepped = await asyncio.gather(posts(PROMPTS[1], False), posts(PROMPTS[2], True))
    assert batcher.batches == before + 1  # one batch held both
    assert whole == [(reference_ids(model, PROMPTS[1], 12), True)]
    assert len(stepped) > 1 and stepped[-1] == (reference_ids(model, PROMPTS[2], 12), True)


async def test_a_row_read_whole_still_ends_at_eos_and_leaves_when_cancelled(model: TransformersTextModel) -> None:
    long = reference_ids(model, PROMPTS[1], 20)
    eos = long[5]
    batcher = StaticBatcher(model=model.model, eos_ids=[eos], batch_size=4, batch_interval=0.0)
    try:
        assert await ids_of(batcher, model, PROMPTS[1], 20, streamed=False) == long[: long.index(eos) + 1]
        # A long one still hands over what it holds now and then (an /abort returns the text so far), many
        # tokens at a time.
        source = batcher.tokens(model._encode(PROMPTS[0]), request(PROMPTS[0], 100_000, streamed=False), None)
        tokens, done = await anext(source)
        assert not done and len(tokens) > 1
        await source.aclose()
        # A client that goes away before the end: the task is cancelled while the row holds its tokens.
        waiting = asyncio.ensure_future(ids_of(batcher, model, PROMPTS[0], 100_000, streamed=False))
        while not batcher._running:
            await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        for _ in range(1000):  # the batch ends at its next step, not after 100 000 tokens
            if not batcher._running:
                break
            await asyncio.sleep(0.01)
        assert not batcher._running
        assert len(await ids_of(batcher, model, PROMPTS[2], 3, streamed=False)) == 3  # the next batch serves
    finally:
        batcher.close()


async def test_a_whole_answer_with_a_stop_string_still_stops_early(model: TransformersTextModel) -> None:
    full, _, _ = await collect(model, "hello world", kind="completion", max_tokens=24)
    stop = full[5:8]
    deltas = [d async for d in model.generate(request("hello world", 24, stop=(stop,), streamed=False))]
    text = "".join(d.text for d in deltas)
    assert deltas[-1].finish_reason == "stop" and stop not in text and full.startswith(text)
    assert (deltas[-1].tokens or 0) < 24  # the row stopped at the match, not at max_tokens
    whole = [d async for d in model.generate(request("hello world", 24, streamed=False))]
    assert len(whole) == 1 and whole[0].text == full  # no stop string: one delta, the same text


async def test_a_stream_gets_its_first_token_at_once_then_chunks_and_a_stop_string_row_every_step(
    batcher: StaticBatcher, model: TransformersTextModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the batch posts for each row (recorded at ``_deliver``: the consumer may join posts that queued up
    while it was busy, so its view depends on timing)."""
    import xinfd_engines.transformers_static as static

    posted: dict[int, list[int]] = {}
    deliver = static._deliver

    def recording(posts: list[tuple[Any, Any]]) -> None:
        for row, (tokens, _) in posts:
            posted.setdefault(row.max_tokens, []).append(len(tokens))
        deliver(posts)

    monkeypatch.setattr(static, "_deliver", recording)

    async def run(prompt: str, max_tokens: int, **kw: Any) -> None:
        async for _ in batcher.tokens(model._encode(prompt), request(prompt, max_tokens, **kw), None):
            pass

    monkeypatch.setattr(static, "_STREAM_FLUSH_S", 3600.0)  # every step is faster than the interval
    await asyncio.gather(run(PROMPTS[1], 12), run(PROMPTS[2], 13, stop=("never-there",)))
    assert posted[12] == [1, 11]  # the first token alone (time to first token), then the rest with the end
    assert posted[13] == [1] * 13  # a stop string is looked for at every step, so usage ends where it matched
    monkeypatch.setattr(static, "_STREAM_FLUSH_S", 0.0)  # every step slower than the interval: token by token
    await run(PROMPTS[1], 14)
    assert posted[14] == [1] * 14
