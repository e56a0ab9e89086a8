"""The transformers engine's padded static-batch path: our own decode loop over the model's forward and its KV
cache (runs in the replica process only; torch is imported lazily).

Why: on CPU, transformers' continuous batching spends a large share of each step preparing its paged-cache
tensors (py-spy: about a quarter on a tiny model), so one request ran ~1.4x slower than a plain ``generate()``
and 8 concurrent ones reached ~0.6x of one padded batch-8 ``generate()``. A padded batch needs none of that:
one ``forward`` per step over a ``DynamicCache``.

How a batch runs (one worker thread, one batch at a time):

* the requests waiting when a batch starts (up to the replica's ``batch_size``) are **left-padded** into one
  tensor, with an attention mask and position ids counted from the mask (as ``generate()`` does for a padded
  batch), and prefilled by one forward that keeps only the last position's logits;
* then one forward per step, each row feeding its own last token; each row picks its token itself: its
  repetition penalty first when it has one, then arg-max at ``temperature == 0``, else temperature, top-k and
  top-p (transformers' own processors, the arithmetic of the ``generate()`` path), then a draw from the row's
  own ``torch.Generator`` when the request has a ``seed`` (the same seed gives the same tokens whatever else is
  in the batch), else torch's global one;
* a row stops on an end-of-sequence token, at ``max_tokens``, or when its iterator is closed (client gone,
  ``/abort``, a stop string matched in ``DeltaBuilder``); a stopped row's cache rows are dropped
  (``_select_rows``) so it costs nothing more, and the batch ends when no row is left;
* ``logprobs``: the raw log-softmax of each asking row's logits is copied into its ``RowPlan`` before the token
  is posted, the form ``transformers_model`` already reads on the continuous-batching path;
* a row whose client reads only the whole answer (``GenerateRequest.streamed`` false, no stop string) holds
  its tokens until it ends and is posted once (or every ``_HELD_FLUSH_S`` on a long one), and a stream without
  stop strings gets its first token at once, then a chunk at most every ``_STREAM_FLUSH_S``: each post wakes
  the replica's event loop, which then detokenises the row and writes its frame, and with 8 rows those
  per-step wake-ups took the GIL from the forward passes they interrupted (py-spy: a fifth of the batch
  thread's time in the loop's wake-up write). A row with stop strings is posted every step, so that its usage
  ends at the step that matched.

The trade-off of a static batch, on purpose: a request that arrives while a batch is decoding waits until that
batch ends (at most its longest ``max_tokens``) before it is prefilled with the others that queued meanwhile.
Continuous batching joins it at the next step instead; it is the better choice when requests are long and
arrive steadily, or on CUDA, where its step overhead is small beside the model. The batch interval
(``XINFERENCE_BATCH_INTERVAL``) is kept as on the other path: a request that arrives while the model is idle
waits that long, so that requests arriving together are prefilled together; requests submitted in the same
event-loop turn always share a batch (the worker is woken only at the end of that turn), and the window ends
as soon as a full batch is waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from xinfd.errors import InvalidRequestError
from xinfd.types import GenerateRequest
from xinfd_engines.transformers_rows import RowPlan

log = logging.getLogger(__name__)

# A request that arrives this soon after a batch ended is taken for a follow-up of that batch's clients.
_FOLLOW_UP_S = 0.05
# How many batch intervals a window waits for the follow-ups it expects (``StaticBatcher._window``).
_FOLLOW_UP_WINDOWS = 4
# A row read only whole still hands over what it holds this often, so that an ``/abort`` answers with the text
# generated up to about then (the host returns what it was given) rather than with nothing.
_HELD_FLUSH_S = 0.25
# A streamed row hands over its first token at once, then at most this often: where a step is faster (a small
# model on CPU), one chunk carries the tokens of several steps, as vLLM's ``stream_interval`` does, instead of
# one event-loop wake-up per token; where a step is slower, every token still goes out as it comes.
_STREAM_FLUSH_S = 0.01

# What the worker posts to a request's queue: (new token ids, finished), or the exception that ended the batch.
Post = Callable[[Any], None]


@dataclass(slots=True, eq=False)
class _Row:
    """One request in (or waiting for) a batch; ``cancelled`` is set by the loop, read by the worker."""

    ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    plan: RowPlan | None
    post: Post
    # Where a step's tokens go without a wake-up of their own: the request's loop and queue (``_deliver``).
    loop: asyncio.AbstractEventLoop | None = None
    queue: asyncio.Queue[Any] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = 0.0  # time.monotonic() at submission
    after_idle: bool = False  # submitted while no other request was waiting or being decoded
    produced: int = 0
    warpers: list[Any] = field(default_factory=list)
    top_k: int | None = None
    repetition_penalty: float | None = None
    # The row's tokens so far (prompt, then generated), kept only when a repetition penalty reads them.
    seen: list[int] | None = None
    # Tokens not yet posted, and how long they may wait (``_decode``): ``_HELD_FLUSH_S`` for a request read only
    # whole, ``_STREAM_FLUSH_S`` for a stream, 0 (every step) for a request with stop strings, whose usage must
    # end at the step that matched.
    held: list[int] = field(default_factory=list)
    flush_every: float = 0.0
    held_since: float = 0.0  # time.monotonic() of the row's last post (or of its batch's start)


class StaticBatcher:
    """Runs padded static batches of a causal LM on one worker thread (see the module docstring)."""

    def __init__(self, *, model: Any, eos_ids: list[int], batch_size: int, batch_interval: float) -> None:
        self.model = model
        self.eos_ids = frozenset(eos_ids)
        self.pad_id = eos_ids[0] if eos_ids else 0
        self.batch_size = max(1, batch_size)
        self.batch_interval = batch_interval
        self._waiting: list[_Row] = []
        self._cond = threading.Condition()
        self._closed = False
        self._running: list[_Row] = []  # the batch being decoded, so that close() can end it
        # The most requests in the model at once (running or waiting) while the last batch ran, and when it
        # ended (``_window``); ``_peak`` is the running batch's.
        self._peak = self._last_peak = 0
        self._last_end = float("-inf")
        params = inspect.signature(model.forward).parameters
        # transformers renamed forward's ``past_key_values`` to ``cache`` (5.2x; the old name warns).
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        keep = next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in params), None)
        self._keep_last: dict[str, Any] = {keep: 1} if keep else {}
        # Architectures with position embeddings take the mask-counted ids; ALiBi ones (BLOOM) have no such
        # argument and derive positions from the mask themselves.
        self._positions = "position_ids" in params
        # Counters for tests and logs: batches run, and rows dropped from a running batch's cache.
        self.batches = 0
        self.rows_dropped = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="xinfd-static-batch")
        self._thread.start()

    # -- the asyncio side ----------------------------------------------------------------------------------
    async def tokens(
        self, ids: list[int], request: GenerateRequest, plan: RowPlan | None
    ) -> AsyncGenerator[tuple[list[int], bool], None]:
        """Yield ``(tokens so far, finished)``; closing the iterator drops the row at the batch's next step."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def post(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to read it
                loop.call_soon_threadsafe(queue.put_nowait, item)

        row = _Row(
            ids=list(ids),
            max_tokens=request.max_tokens,
            temperature=float(request.temperature),
            top_p=float(request.top_p),
            plan=plan,
            post=post,
            loop=loop,
            queue=queue,
            top_k=request.top_k,
            repetition_penalty=request.repetition_penalty,
        )
        if row.repetition_penalty is not None and row.repetition_penalty != 1.0:
            row.seen = list(row.ids)
        if not request.stop:
            # Nothing reads its steps (no stream, no stop string to look for): one post when it ends; a stream
            # gets its tokens in chunks no more often than _STREAM_FLUSH_S.
            row.flush_every = _STREAM_FLUSH_S if request.streamed else _HELD_FLUSH_S
        if not row.ids:
            raise InvalidRequestError("the prompt is empty: there is nothing to continue", param="prompt")
        row.warpers = _warpers(row)  # here, so that a value the warpers refuse fails this request only
        with self._cond:
            if self._closed:
                raise RuntimeError("the model is closed")
            # A finished request's row is marked cancelled by its own iterator's exit, so a request that
            # follows another back to back counts as arriving while idle even before the worker has noticed.
            row.after_idle = not self._waiting and all(r.cancelled.is_set() for r in self._running)
            row.arrived = time.monotonic()
            self._waiting.append(row)
            if self._running:
                running = sum(not r.cancelled.is_set() for r in self._running)
                self._peak = max(self._peak, running + len(self._waiting))
        # Woken at the end of this loop turn, so requests submitted together are prefilled together.
        loop.call_soon(self._wake)
        generated: list[int] = []
        try:
            while True:
                items = [await queue.get()]
                # Whatever else has arrived goes out with it: when the loop falls behind the batch (many
                # streams), one detokenisation covers several steps instead of one per step.
                while not queue.empty() and not isinstance(items[-1], BaseException) and not items[-1][1]:
                    items.append(queue.get_nowait())
                done = False
                fresh: list[int] = []
                for item in items:
                    if isinstance(item, BaseException):
                        raise RuntimeError(f"generation failed: {item}") from item
                    fresh += item[0]
                    done = item[1]
                generated = generated + fresh
                yield generated, done
                if done:
                    return
        finally:
            row.cancelled.set()  # a no-op for a finished row; otherwise it leaves the batch at the next step

    def _window(self, first: _Row, follow_up: bool) -> tuple[int, float, float]:
        """How many waiting requests close a gathering window, when it opened, and its longest length.

        Right after a batch (``follow_up``: the first waiting request queued behind it, or arrived within
        ``_FOLLOW_UP_S`` of its end), the window expects as many requests as the model held at once while that
        batch ran, and counts from its end. Clients that wait for their answer before asking again (a closed
        loop, the common load) come back together once their batch answered, but relayed through the daemon
        they come a few ms apart: closing the window before a straggler splits them into two batches for good
        (each a whole decode, one after the other), so it waits up to ``_FOLLOW_UP_WINDOWS`` intervals for
        them, and not at all once they are all there (a lone client never waits). Otherwise the window is one
        interval from the arrival of the request that found the model idle, closed early by a full batch."""
        if follow_up and self._last_peak:
            start = max(first.arrived, self._last_end)
            return min(self.batch_size, self._last_peak), start, self.batch_interval * _FOLLOW_UP_WINDOWS
        return self.batch_size, first.arrived, self.batch_interval

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for row in self._running:
                row.cancelled.set()
                row.post(RuntimeError("the model was closed"))
            self._cond.notify()
        self._thread.join(timeout=5)

    # -- the worker thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    for row in self._waiting:
                        row.post(RuntimeError("the model was closed"))
                    return
                first = self._waiting[0]
                follow_up = first.arrived - self._last_end <= _FOLLOW_UP_S or not first.after_idle
                if self.batch_interval > 0 and (first.after_idle or follow_up):
                    # The gathering window (see ``_window``): from the arrival of a request that found the
                    # model idle, or from the end of the batch the waiting requests queued behind.
                    enough, start, window = self._window(first, follow_up)
                    deadline = start + window
                    while len(self._waiting) < enough and not self._closed:
                        if (left := deadline - time.monotonic()) <= 0:
                            break
                        self._cond.wait(left)
                    if self._closed:
                        continue  # the top of the loop fails the waiting requests
                live = [r for r in self._waiting if not r.cancelled.is_set()]
                rows, self._waiting = live[: self.batch_size], live[self.batch_size :]
                self._running = rows
                self._peak = len(rows) + len(self._waiting)
            if not rows:
                continue
            try:
                log.debug("static batch of %d row(s)", len(rows))
                self._decode(rows)
            except Exception as exc:  # reported to every request of the batch, not lost in the thread
                log.exception("a static batch of %d request(s) failed", len(rows))
                for row in rows:
                    row.post(exc)
            finally:
                with self._cond:
                    self._running = []
                    self._last_end = time.monotonic()
                    self._last_peak = self._peak

    def _decode(self, rows: list[_Row]) -> None:
        import torch

        self.batches += 1
        device = next(self.model.parameters()).device
        width = max(len(r.ids) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row.ids) :] = torch.tensor(row.ids, dtype=torch.long)
            mask[i, width - len(row.ids) :] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        # Position ids counted from the mask, as generate() does for a left-padded batch.
        positions = (mask.cumsum(-1) - 1).masked_fill_(mask == 0, 1)
        cache = _new_cache(self.model)
        started = time.monotonic()
        for row in rows:
            # A stream's first token goes out at once; a whole answer's tokens are held from the start.
            row.held_since = started if row.flush_every == _HELD_FLUSH_S else float("-inf")
        with torch.inference_mode():
            logits, cache = self._forward(input_ids, mask, positions, cache)
            posts: list[tuple[_Row, Any]] = []
            while True:
                picked = self._pick(torch, rows, logits)
                now = time.monotonic()
                keep: list[int] = []
                for i, (row, token) in enumerate(zip(rows, picked, strict=True)):
                    if row.cancelled.is_set():
                        continue  # closed meanwhile: nobody reads it any more
                    row.produced += 1
                    if row.seen is not None:
                        row.seen.append(token)
                    done = token in self.eos_ids or row.produced >= row.max_tokens
                    if done or now - row.held_since >= row.flush_every:
                        posts.append((row, ([*row.held, token], done)))
                        row.held, row.held_since = [], now
                    else:
                        row.held.append(token)
                    if not done:
                        keep.append(i)
                if posts:
                    _deliver(posts)
                    posts.clear()
                if not keep:
                    return
                last = torch.tensor(picked, dtype=torch.long, device=device).unsqueeze(-1)
                if len(keep) < len(rows):
                    index = torch.tensor(keep, dtype=torch.long, device=device)
                    if (selected := _select_rows(cache, index)) is not None:
                        self.rows_dropped += len(rows) - len(keep)
                        rows, cache = [rows[i] for i in keep], selected
                        last, mask, positions = last[index], mask[index], positions[index]
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
                positions = positions[:, -1:] + 1
                logits, cache = self._forward(last, mask, positions, cache)

    def _forward(self, input_ids: Any, mask: Any, positions: Any, cache: Any) -> tuple[Any, Any]:
        """The last position's logits, and the cache (a DynamicCache is filled in place; releases without one
        hand back tuples in the output)."""
        extra: dict[str, Any] = dict(self._keep_last)
        if self._positions:
            extra["position_ids"] = positions
        if cache is not None:
            extra[self._cache_arg] = cache
        out = self.model(input_ids=input_ids, attention_mask=mask, use_cache=True, **extra)
        returned = getattr(out, "past_key_values", None)
        if returned is None:
            returned = getattr(out, "cache", None)
        return out.logits[:, -1, :], (cache if returned is None else returned)

    def _pick(self, torch: Any, rows: list[_Row], logits: Any) -> list[int]:
        """Each row's next token: arg-max for greedy rows, a draw from the warped distribution otherwise."""
        picked: list[int] = logits.argmax(-1).tolist()
        for i, row in enumerate(rows):
            if row.cancelled.is_set():
                continue
            if row.plan is not None and row.plan.logprobs:
                row.plan.rows.append(torch.log_softmax(logits[i].float(), dim=-1).cpu())
            if row.seen is not None:  # the penalty changes greedy picks too
                scores = row.warpers[0](torch.tensor([row.seen], device=logits.device), logits[i : i + 1].float())
                if row.temperature <= 0:
                    picked[i] = int(scores.argmax(-1))
                    continue
            else:
                scores = logits[i : i + 1].float()
            if row.temperature > 0:
                for warper in row.warpers[1 if row.seen is not None else 0 :]:
                    scores = warper(None, scores)
                probs = torch.softmax(scores, dim=-1)
                generator = row.plan.generator if row.plan is not None else None
                if generator is not None:
                    probs = probs.cpu()
                picked[i] = int(torch.multinomial(probs, 1, generator=generator))
        return picked


def _deliver(posts: list[tuple[_Row, Any]]) -> None:
    """Hand one step's tokens to their requests with one ``call_soon_threadsafe`` per event loop, not one per
    row: each call writes the loop's wake-up pipe, and with 8 rows those writes and wake-ups were a visible
    share of a one-core replica's time (py-spy), taken from the same core the batch computes on."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Any], Any]]] = {}
    for row, item in posts:
        if row.loop is None or row.queue is None:
            row.post(item)
        else:
            by_loop.setdefault(row.loop, []).append((row.queue, item))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to read them
            loop.call_soon_threadsafe(_put_all, items)


def _put_all(items: list[tuple[asyncio.Queue[Any], Any]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)


def _warpers(row: _Row) -> list[Any]:
    """The row's logits processors in ``generate()``'s order, transformers' own classes (every release since
    4.28 has them): the repetition penalty first (over ``row.seen``; greedy rows too), then, for a sampling row,
    temperature, top-k and top-p. OpenAI's API has no top-k; Xinference's clients and vLLM's send it."""
    from transformers import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors: list[Any] = []
    if row.seen is not None:
        processors.append(RepetitionPenaltyLogitsProcessor(float(row.repetition_penalty or 1.0)))
    if row.temperature <= 0:
        return processors
    processors.append(TemperatureLogitsWarper(row.temperature))
    if row.top_k is not None and row.top_k > 0:
        processors.append(TopKLogitsWarper(int(row.top_k)))
    if row.top_p < 1:
        processors.append(TopPLogitsWarper(row.top_p))
    return processors


def _select_rows(cache: Any, index: Any) -> Any:
    """``cache`` with only the batch rows in ``index``, or None where its layout is unknown (the finished rows
    then stay in the batch, computed but never posted)."""
    if hasattr(cache, "batch_select_indices"):  # transformers >= 4.38
        cache.batch_select_indices(index)
        return cache
    keys, values = getattr(cache, "key_cache", None), getattr(cache, "value_cache", None)
    if isinstance(keys, list) and isinstance(values, list):  # 4.36 / 4.37 DynamicCache
        cache.key_cache = [k[index] for k in keys]
        cache.value_cache = [v[index] for v in values]
        return cache
    if isinstance(cache, tuple) and all(isinstance(layer, tuple) for layer in cache):  # legacy tuples
        return tuple(tuple(t[index] for t in layer) for layer in cache)
    return None


def _new_cache(model: Any) -> Any:
    """A DynamicCache for ``model`` (with its config where accepted, so sliding-window layers are laid out
    right); None on releases without one (transformers < 4.36, tuples)."""
    try:
        from transformers import DynamicCache
    except ImportError:
        return None
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # releases before the config argument
        return DynamicCache()
