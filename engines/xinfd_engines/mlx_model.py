"""The mlx model object (replica process only): mlx-lm's ``BatchGenerator`` driven by one owner thread.

mlx-lm ships continuous batching (``BatchGenerator``: ``insert`` prompts, ``next_generated`` runs one decode
step for every sequence in the batch, ``remove`` drops sequences). MLX streams belong to the thread that made
them, so one thread owns the model and the generator: it loads them, takes commands (add, remove) between
steps from a queue, runs a step while anything is in flight, and hands each token to the asyncio loop with
``call_soon_threadsafe``. The batch is capped by the replica's ``settings.batch_size`` (the daemon's
``XINFERENCE_BATCH_SIZE``); an aborted request is removed before the next step. Per-request sampling uses
mlx-lm's ``make_sampler(temp, top_p)``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from xinfd.types import ChatMessage, GeneratedDelta, GenerateRequest
from xinfd_engines.transformers_stream import DeltaBuilder, prompt_opens_reasoning, to_delta

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Sequence:
    """One request in the batch, as the owner thread sees it."""

    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    deliver: Callable[[int | None, str | None], None]  # (token, finish reason); runs on the asyncio loop
    uid: int = -1
    tokens: list[int] = field(default_factory=list)


class MlxTextModel:
    """A ``TextModel`` over mlx-lm; all MLX work happens on ``self._thread``."""

    context_window: int | None = None  # mlx-lm serves the family's whole context_length

    def __init__(self, location: str, *, batch_size: int, enable_thinking: bool | None) -> None:
        if batch_size < 1:
            raise ValueError(f"replica settings: batch_size must be at least 1, got {batch_size}")
        self.location = location
        self.batch_size = batch_size
        self.enable_thinking = enable_thinking
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.tokenizer: Any = None
        self.tokens_generated = 0
        self._thread = threading.Thread(target=self._run, name="xinfd-mlx", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise RuntimeError(f"cannot load {location} with mlx-lm: {self._error}") from self._error
        template = getattr(self.tokenizer, "chat_template", None) or ""
        self.parse_reasoning = "</think>" in str(template)

    # -- owner thread --------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            import mlx.core as mx
            from mlx_lm import load
            from mlx_lm.generate import BatchGenerator
            from mlx_lm.sample_utils import make_sampler

            loaded: Any = load(self.location)
            model, tokenizer = loaded[0], loaded[1]
            self.tokenizer = tokenizer
            eos = sorted(getattr(tokenizer, "eos_token_ids", None) or {tokenizer.eos_token_id})
            generator: Any = BatchGenerator(
                model,
                stop_tokens=[[t] for t in eos],
                completion_batch_size=self.batch_size,
                prefill_batch_size=min(8, self.batch_size),
                stream=mx.new_stream(mx.cpu),
            )
        except BaseException as exc:  # reported by __init__ in the caller's thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        live: dict[int, _Sequence] = {}
        while True:
            block = not live
            try:
                while True:
                    command, payload = self._commands.get(block=block)
                    block = False
                    if command == "add":
                        seq: _Sequence = payload
                        sampler = make_sampler(
                            temp=seq.temperature, top_p=seq.top_p if seq.top_p < 1 else 0.0
                        )
                        (seq.uid,) = generator.insert(
                            [seq.prompt], max_tokens=[seq.max_tokens], samplers=[sampler]
                        )
                        live[seq.uid] = seq
                    elif command == "remove" and payload.uid in live:
                        generator.remove([payload.uid])
                        del live[payload.uid]
            except queue.Empty:
                pass
            if not live:
                continue
            for response in generator.next_generated():
                current = live.get(response.uid)
                if current is None:
                    continue
                self.tokens_generated += 1
                current.deliver(response.token, response.finish_reason)
                if response.finish_reason is not None:
                    del live[response.uid]

    # -- TextModel -----------------------------------------------------------------------------------------
    def render_chat(self, messages: list[ChatMessage], options: Mapping[str, Any]) -> str:
        kwargs: dict[str, Any] = {}
        if self.enable_thinking is not None:
            kwargs["enable_thinking"] = self.enable_thinking
        kwargs.update(options)
        turns = [{"role": m.role, "content": m.content} for m in messages]
        return str(
            self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True, **kwargs)
        )

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def _encode(self, text: str) -> list[int]:
        bos = getattr(self.tokenizer, "bos_token", None)
        return list(self.tokenizer.encode(text, add_special_tokens=not (bos and text.startswith(bos))))

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GeneratedDelta]:
        loop = asyncio.get_running_loop()
        results: asyncio.Queue[tuple[int | None, str | None]] = asyncio.Queue()

        def deliver(token: int | None, reason: str | None) -> None:
            loop.call_soon_threadsafe(results.put_nowait, (token, reason))

        seq = _Sequence(
            prompt=self._encode(request.prompt),
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            deliver=deliver,
        )
        chat = request.kind == "chat"
        builder = DeltaBuilder(
            stop=request.stop,
            parse_reasoning=self.parse_reasoning and chat,
            starts_in_reasoning=prompt_opens_reasoning(request.prompt),
        )
        self._commands.put(("add", seq))
        tokens: list[int] = []
        eos = set(getattr(self.tokenizer, "eos_token_ids", None) or {self.tokenizer.eos_token_id})
        finished = False
        try:
            while True:
                token, reason = await results.get()
                if token is not None and token not in eos:
                    tokens.append(token)
                done = reason is not None
                piece = builder.push(self.tokenizer.decode(tokens), final=done)
                delta = to_delta(piece, done=done, natural_stop=reason == "stop", tokens=len(tokens))
                if delta is not None:
                    ended = delta.finish_reason is not None
                    finished = ended and done  # before the yield: a consumer with its answer closes the iterator there
                    yield delta
                    if ended:
                        return
        finally:
            if not finished:
                self._commands.put(("remove", seq))
                log.info("%s removed from the batch after %d token(s)", request.request_id, len(tokens))
