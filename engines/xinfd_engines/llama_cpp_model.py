"""What runs inside a llama.cpp replica: ``LlamaCppModel`` (chat and completions) and ``LlamaCppEmbedder``
(``/v1/embeddings``), both over ``llama_cpp.Llama``.

llama-cpp-python serves one sequence at a time per ``Llama`` object (no batching API), so requests are served in
arrival order, one after the other; an aborted request stops at its next token. The chat template is the
GGUF's own (``tokenizer.chat_template`` metadata), rendered with llama-cpp-python's Jinja2 formatter.
``llama_cpp`` is imported inside the methods: the daemon imports this module's names without it.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import random
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from xinfd.types import ChatMessage, GeneratedDelta, GenerateRequest, TokenLogprob
from xinfd_engines.transformers_stream import DeltaBuilder, prompt_opens_reasoning, to_delta

log = logging.getLogger(__name__)


def bool_option(options: Mapping[str, Any], name: str) -> bool | None:
    value = options.get(name)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise ValueError(f"launch option {name!r} must be true or false, got {value!r}")



def _threads(options: Mapping[str, Any]) -> int:
    return int(options.get("n_threads") or os.environ.get("OMP_NUM_THREADS") or 1)


class LlamaCppModel:
    """A ``TextModel`` over ``llama_cpp.Llama``; generation runs in a thread, one request at a time."""

    def __init__(self, llm: Any, *, enable_thinking: bool | None) -> None:
        from llama_cpp.llama_chat_format import (  # type: ignore[import-not-found,unused-ignore]
            Jinja2ChatFormatter,
        )

        self.llm = llm
        self.enable_thinking = enable_thinking
        self._lock = threading.Lock()
        meta = dict(getattr(llm, "metadata", {}) or {})
        vocab = llm._model  # the token texts below are what the template writes

        def token_text(token: int) -> str:
            return str(vocab.token_get_text(token)) if token >= 0 else ""

        self.bos_text = token_text(llm.token_bos())
        self.eos_text = token_text(llm.token_eos())
        template = meta.get("tokenizer.chat_template")
        self.formatter: Any = (
            Jinja2ChatFormatter(template=template, eos_token=self.eos_text, bos_token=self.bos_text)
            if template
            else None
        )
        self.parse_reasoning = "</think>" in str(template or "")
        # What the worker host checks prompts against (TextModel.context_window): the n_ctx asked for.
        self.context_window: int | None = int(llm.context_params.n_ctx)
        self.tokens_generated = 0  # tokens sampled, over all requests (tests watch it stop after a close)

    @classmethod
    def load(cls, path: str, options: Mapping[str, Any]) -> LlamaCppModel:
        """Load the GGUF at ``path``. ``n_threads`` (else ``OMP_NUM_THREADS``, else 1) sets the threads of both
        token generation and prompt processing: llama-cpp-python's default for the latter is every CPU, which
        ignored the limit, and on a busy machine made even a tiny model's first prompt wait ~0.4 s in ggml's
        thread barrier."""
        from llama_cpp import Llama  # type: ignore[import-not-found,unused-ignore]

        threads = _threads(options)
        llm = Llama(
            model_path=path,
            n_ctx=int(options.get("n_ctx") or 4096),
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        return cls(llm, enable_thinking=bool_option(options, "enable_thinking"))

    def render_chat(self, messages: list[ChatMessage], options: Mapping[str, Any]) -> str:
        turns = [{"role": m.role, "content": m.content} for m in messages]
        if self.formatter is None:
            return "".join(f"{t['role']}: {t['content']}\n" for t in turns) + "assistant:"
        kwargs: dict[str, Any] = {}
        if self.enable_thinking is not None:
            kwargs["enable_thinking"] = self.enable_thinking
        kwargs.update(options)
        # The formatter passes extra keyword arguments on to the template (as chat_template_kwargs).
        return str(self.formatter(messages=turns, **kwargs).prompt)

    def _encode(self, text: str) -> list[int]:
        add_bos = not (self.bos_text and text.startswith(self.bos_text))
        return list(self.llm.tokenize(text.encode(), add_bos=add_bos, special=True))

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GeneratedDelta]:
        loop = asyncio.get_running_loop()
        results: asyncio.Queue[_Step] = asyncio.Queue()
        cancel = threading.Event()
        chat = request.kind == "chat"
        builder = DeltaBuilder(
            stop=request.stop,
            parse_reasoning=self.parse_reasoning and chat,
            starts_in_reasoning=prompt_opens_reasoning(request.prompt),
        )

        def post(step: _Step) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens any more
                loop.call_soon_threadsafe(results.put_nowait, step)

        def run() -> None:
            with self._lock:  # one sequence at a time per Llama object
                if cancel.is_set():
                    return  # closed while waiting for the lock: do not even read the prompt
                try:
                    reason, count = self._sample(
                        request, cancel, lambda text, n, lp=(): post(_Step(text, tokens=n, logprobs=lp)))
                except Exception as exc:
                    post(_Step(error=exc))
                    return
                if reason is not None:
                    post(_Step(finish_reason=reason, tokens=count))

        worker = loop.run_in_executor(None, run)
        text, finished, counted = "", False, 0
        scored: list[TokenLogprob] = []  # logprobs not yet attached to a delta (text held back)
        try:
            while True:
                step = await results.get()
                if step.error is not None:
                    finished = True
                    raise step.error
                text += step.text
                counted = step.tokens
                scored += step.logprobs
                done = step.finish_reason is not None
                piece = builder.push(text, final=done)
                delta = to_delta(piece, done=done, natural_stop=step.finish_reason == "stop", tokens=counted)
                if delta is not None:
                    if scored:
                        delta, scored = replace(delta, logprobs=tuple(scored)), []
                    ended = delta.finish_reason is not None
                    finished = ended and done  # before the yield: a consumer with its answer closes the iterator there
                    yield delta
                    if ended:
                        return
        finally:
            cancel.set()
            if not finished:
                log.info("%s cancelled after %d characters", request.request_id, len(text))
            del worker  # the thread ends at its next token

    def _sample(self, request: GenerateRequest, cancel: threading.Event,
                emit: Callable[..., None]) -> tuple[str | None, int]:
        """Generate in the calling thread, token by token; ``emit`` gets the text of each token as it comes and
        the tokens generated so far, and when the request asks for logprobs (``GenerateRequest.logprobs``) the
        token's ``TokenLogprob`` from the raw logits llama.cpp sampled it from (``Llama.scores``, the last
        evaluated position's row), with the ``k`` most likely alternatives.

        Returns the finish reason (None when ``cancel`` was set) and the number of tokens generated (the
        end-of-generation token excluded). This drives ``Llama.generate`` rather than
        ``create_completion(stream=True)``: the latter yields nothing while its pending tokens do not decode as
        UTF-8 (a stray byte token, which small and random models emit), re-decoding every prefix of them at each
        new token, so a stream could stall to its end in cubic time, and a closed stream (or a stop string) was
        only noticed at the next chunk, maybe the last; it also dropped bad bytes and counted chunks, not
        tokens. Here ``cancel`` is checked after every token, ``max_tokens`` is exact, and an incremental decoder
        holds back only a split multi-byte character (bad bytes become U+FFFD, as transformers decodes them).
        """
        from llama_cpp import llama_vocab_is_eog  # type: ignore[import-not-found,unused-ignore]

        prompt = self._encode(request.prompt)
        # The n_ctx asked for: llama.cpp rounds its context up (to 256), but llama-cpp-python's token buffer
        # has the size asked for, and a longer sequence fails in numpy (create_completion checks the former).
        n_ctx = int(self.llm.context_params.n_ctx)
        if len(prompt) >= n_ctx:
            raise ValueError(f"the prompt is {len(prompt)} tokens long; the llama.cpp context (n_ctx) is {n_ctx}")
        budget = min(request.max_tokens, n_ctx - len(prompt))
        # create_completion's seeding: the request's seed, else a fresh one (Llama keeps the last one set).
        self.llm.set_seed(request.seed if request.seed is not None else random.getrandbits(32))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        vocab = self.llm._model.vocab
        reason, count = "length", 0
        # Sampling as create_completion's defaults (top_k=40, min_p=0.05, no repetition penalty) with the
        # request's temperature, top_p, and top_k / repetition_penalty when it sets them.
        tokens = self.llm.generate(
            prompt, temp=request.temperature, top_p=request.top_p,
            top_k=request.top_k if request.top_k is not None else 40,
            repeat_penalty=request.repetition_penalty if request.repetition_penalty is not None else 1.0,
        )
        for produced, token in enumerate(tokens, start=1):
            self.tokens_generated += 1
            if cancel.is_set():
                return None, count
            if llama_vocab_is_eog(vocab, token):
                reason = "stop"
                break
            count = produced
            logprobs = () if request.logprobs is None else (self._logprob(token, request.logprobs),)
            piece = decoder.decode(self.llm.detokenize([token]))
            if piece or logprobs:
                emit(piece, count, logprobs)
            if produced >= budget:
                break
        # Bytes of a character cut short (max_tokens) end as U+FFFD; the count says the step is the last one.
        emit(decoder.decode(b"", final=True), count)
        return reason, count


    def _logprob(self, token: int, top: int) -> TokenLogprob:
        """The sampled token's log probability under the logits it was sampled from: the context's last output
        row, which ``Llama.generate`` has not advanced past yet when it yields the token (llama-cpp-python 0.3
        keeps ``Llama.scores`` only with ``logits_all``, so the row is read from the context itself)."""
        import numpy as np

        pointer = self.llm._ctx.get_logits_ith(-1)
        row = np.ctypeslib.as_array(pointer, shape=(self.llm.n_vocab(),)).astype(np.float64)
        shifted = row - row.max()
        logprobs = shifted - np.log(np.exp(shifted).sum())
        best = np.argsort(-logprobs, kind="stable")[:top] if top else []
        text = self._token_text
        return TokenLogprob(token=text(token), logprob=float(logprobs[token]),
                            top=tuple((text(int(i)), float(logprobs[i])) for i in best))

    def _token_text(self, token: int) -> str:
        return bytes(self.llm.detokenize([token])).decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class _Step:
    """What the generating thread hands to ``generate``: new text, the finish reason, or the error it raised."""

    text: str = ""
    finish_reason: str | None = None
    error: Exception | None = None
    tokens: int = 0  # generated so far
    logprobs: tuple[TokenLogprob, ...] = ()  # of the step's token, when the request asked


# llama.cpp's pooling types (llama.h: enum llama_pooling_type), by the names the launch option takes. "none"
# (one vector per token) is left out: /v1/embeddings returns one vector per input.
POOLING = {"model": -1, "mean": 1, "cls": 2, "last": 3}


class LlamaCppEmbedder:
    """An ``EmbeddingModel`` over ``llama_cpp.Llama(embedding=True)``: one vector per input, L2-normalised by
    default (as OpenAI's embeddings are), computed one batch at a time in a thread.

    Pooling: the GGUF's own (``<arch>.pooling_type``, set by embedding models such as BERT or nomic-embed); a
    model without one (a plain decoder) would give one vector per *token*, so it is mean-pooled unless the
    launch option ``pooling`` says otherwise.
    """

    def __init__(self, llm: Any, *, normalize: bool) -> None:
        self.llm = llm
        self.normalize = normalize
        self.context_window: int | None = int(llm.context_params.n_ctx)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str, options: Mapping[str, Any]) -> LlamaCppEmbedder:
        from llama_cpp import Llama  # type: ignore[import-not-found,unused-ignore]

        pooling = str(options.get("pooling") or "auto")
        if pooling == "auto":
            # Read the GGUF's metadata without loading the weights twice: a vocab-only load is milliseconds.
            probe = Llama(model_path=path, vocab_only=True, verbose=False)
            meta = dict(getattr(probe, "metadata", {}) or {})
            arch = meta.get("general.architecture", "")
            pooling = "model" if f"{arch}.pooling_type" in meta else "mean"
            del probe
        threads = _threads(options)
        llm = Llama(
            model_path=path,
            embedding=True,
            pooling_type=POOLING[pooling],
            n_ctx=int(options.get("n_ctx") or 4096),
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        normalize = bool_option(options, "normalize")
        log.info("loaded %s for embeddings (pooling %s, dimension %d)", path, pooling, llm.n_embd())
        return cls(llm, normalize=True if normalize is None else normalize)

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode(), add_bos=True, special=True))

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._embed, texts)

    def _embed(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            vectors = self.llm.embed(texts, normalize=self.normalize, truncate=False)
        return [[float(x) for x in row] for row in vectors]
