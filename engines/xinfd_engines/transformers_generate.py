"""The transformers engine's path for releases without continuous batching (transformers < 5): one
``model.generate()`` per request on its own thread, streamed token by token (runs in the replica process only).

A model venv may pin an old transformers (the spec's GOT-OCR2 needs 4.37.2); those releases have no
``init_continuous_batching``, but every release since 4.28 has ``generate(streamer=...)`` and stopping criteria,
which is all this needs:

* a streamer (the ``TextIteratorStreamer`` protocol: ``put``/``end``) that hands each new token id to the asyncio
  loop with ``call_soon_threadsafe``: token ids rather than text, so usage counts exactly what was generated and
  the engine's ``DeltaBuilder`` does the detokenisation, stop strings and ``<think>`` split as on the batched
  path;
* a stopping criterion that reads a ``threading.Event``: closing the request's iterator (client gone, ``/abort``,
  a stop string matched) sets it and ``generate()`` returns at its next step;
* at most ``batch_size`` generations at once (``ReplicaSettings.batch_size``); more wait for a slot.

``temperature == 0`` is greedy decoding (``do_sample=False``). A request with a ``seed`` draws its tokens with
its own ``torch.Generator`` (``SeededDraw``, after the temperature and top-p warpers, leaving one token possible
for a greedy pick): ``generate()`` would otherwise sample from torch's process-wide generator, which every
concurrent generation consumes, so seeding it could never make one request reproducible.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator
from typing import Any

from xinfd.types import GenerateRequest

log = logging.getLogger(__name__)

_END = object()


class _TokenStreamer:
    """``generate(streamer=...)``: the first ``put`` is the prompt (skipped), then one call per step."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
        self._loop, self._queue, self._prompt_seen = loop, queue, False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self._loop.call_soon_threadsafe(self._queue.put_nowait, [int(t) for t in value.reshape(-1).tolist()])

    def end(self) -> None:
        pass  # the thread posts _END itself, after generate() returns or raises


class ThreadedGenerator:
    """Runs ``model.generate`` per request on a thread and yields the cumulative generated token ids."""

    def __init__(self, *, model: Any, eos_ids: list[int], concurrency: int) -> None:
        self.model = model
        self.eos_ids = eos_ids
        self._slots = threading.BoundedSemaphore(max(1, concurrency))
        self._running = 0
        self._lock = threading.Lock()

    async def tokens(self, ids: list[int], request: GenerateRequest) -> AsyncGenerator[tuple[list[int], bool], None]:
        """Yield ``(tokens so far, finished)``; closing the iterator stops the generation at its next step."""
        import torch

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()
        kwargs = self._generate_kwargs(torch, ids, request, cancel, _TokenStreamer(loop, queue))

        def run() -> None:
            with self._slots:
                if cancel.is_set():
                    loop.call_soon_threadsafe(queue.put_nowait, _END)
                    return
                with self._lock:
                    self._running += 1
                try:
                    with torch.inference_mode():
                        self.model.generate(**kwargs)
                    loop.call_soon_threadsafe(queue.put_nowait, _END)
                except Exception as exc:  # reported to the request, not lost in a thread
                    log.exception("generate() failed for %s", request.request_id)
                    loop.call_soon_threadsafe(queue.put_nowait, exc)
                finally:
                    with self._lock:
                        self._running -= 1

        thread = threading.Thread(target=run, daemon=True, name=f"xinfd-generate-{request.request_id}")
        thread.start()
        generated: list[int] = []
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    yield generated, True
                    return
                if isinstance(item, Exception):
                    raise RuntimeError(f"generation failed: {item}") from item
                generated = generated + item
                yield generated, False
        finally:
            cancel.set()  # a no-op once generate() returned; otherwise it stops at the next step

    def _generate_kwargs(
        self, torch: Any, ids: list[int], request: GenerateRequest, cancel: threading.Event, streamer: Any
    ) -> dict[str, Any]:
        device = getattr(self.model, "device", "cpu")
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)

        def stop_when_cancelled(input_ids: Any, scores: Any, **_: Any) -> Any:
            # A bool per row: transformers < 4.39 takes any(); later releases OR the rows together.
            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        from transformers import StoppingCriteria, StoppingCriteriaList

        criterion: Any = type("StopWhenCancelled", (StoppingCriteria,), {"__call__": staticmethod(stop_when_cancelled)})
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": request.max_tokens,
            "min_new_tokens": 0,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([criterion()]),
            "eos_token_id": self.eos_ids or None,
            "pad_token_id": self.eos_ids[0] if self.eos_ids else 0,
        }
        if request.temperature > 0 and request.seed is not None:
            from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

            warpers: list[Any] = [TemperatureLogitsWarper(float(request.temperature))]
            if request.top_p < 1:
                warpers.append(TopPLogitsWarper(float(request.top_p)))
            kwargs.update(do_sample=False, logits_processor=LogitsProcessorList([*warpers, SeededDraw(request.seed)]))
        elif request.temperature > 0:
            kwargs.update(do_sample=True, temperature=float(request.temperature), top_p=float(request.top_p), top_k=0)
        else:
            kwargs.update(do_sample=False)
        return kwargs


class SeededDraw:
    """A logits processor (the ``(input_ids, scores)`` protocol of every transformers release) that samples each
    row from its warped scores with its own generator, then leaves only the drawn token possible."""

    def __init__(self, seed: int) -> None:
        import torch

        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        probs = torch.softmax(scores.float(), dim=-1).cpu()
        drawn = torch.multinomial(probs, 1, generator=self.generator).to(scores.device)
        only = torch.full_like(scores, float("-inf"))
        return only.scatter(-1, drawn, 0.0)
