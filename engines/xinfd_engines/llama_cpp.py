"""The ``llama.cpp`` engine (llama-cpp-python): GGUF models on CPU, served by xinfd's worker host.

The placeholder is ``#llama_cpp_dependencies#``. PyPI has no wheel, so it is built from source; the default
build uses the build machine's native instructions and dies with SIGILL on other CPUs (and on VMs that refuse
AMX), so the engine declares its portable build (``xinfd_engine_build_env``: ``BUILD_ENV``) and the venv
builder builds it that way once and keeps the wheel.

llama-cpp-python serves one sequence at a time per ``Llama`` object (no batching API), so requests are
served in arrival order, one after the other; an aborted request stops at its next token. The chat template
is the GGUF's own (``tokenizer.chat_template`` metadata), rendered with llama-cpp-python's Jinja2 formatter.
Imported by the daemon: standard library and xinfd types only.
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
from dataclasses import dataclass
from typing import Any

from xinfd.hookspecs import hookimpl
from xinfd.types import (
    Availability,
    ChatMessage,
    EmbeddingModel,
    EngineInfo,
    GeneratedDelta,
    GenerateRequest,
    LaunchSpec,
    ModelSpec,
    Platform,
    RegisterEngine,
    ReplicaContext,
    TextModel,
)
from xinfd.worker.launch import worker_launch_spec
from xinfd_engines._common import reject_unknown_options
from xinfd_engines.transformers import check_local_availability, weights_location
from xinfd_engines.transformers_stream import DeltaBuilder, prompt_opens_reasoning

log = logging.getLogger(__name__)

NAME = "llama.cpp"
REQUIREMENTS = ["llama-cpp-python>=0.3.7", "jinja2>=3.1"]
# How llama-cpp-python must be built (it has no wheel on PyPI): portable CPU code instead of the build machine's
# own instructions (SIGILL elsewhere, and on VMs that refuse AMX), without the multimodal library xinfd does not
# use (halves the build). The venv builder builds it once with these and caches the wheel (xinfd.venvs.wheels).
BUILD_ENV = {"CMAKE_ARGS": "-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"}
KNOWN_OPTIONS = frozenset({"model_path", "n_ctx", "n_threads", "enable_thinking"})


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
        self.context_window = int(llm.context_params.n_ctx)
        self.tokens_generated = 0  # tokens sampled, over all requests (tests watch it stop after a close)

    @classmethod
    def load(cls, path: str, options: Mapping[str, Any]) -> LlamaCppModel:
        """Load the GGUF at ``path``. ``n_threads`` (else ``OMP_NUM_THREADS``, else 1) sets the threads of both
        token generation and prompt processing: llama-cpp-python's default for the latter is every CPU, which
        ignored the limit, and on a busy machine made even a tiny model's first prompt wait ~0.4 s in ggml's
        thread barrier."""
        from llama_cpp import Llama  # type: ignore[import-not-found,unused-ignore]

        threads = int(options.get("n_threads") or os.environ.get("OMP_NUM_THREADS") or 1)
        llm = Llama(
            model_path=path,
            n_ctx=int(options.get("n_ctx") or 4096),
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        return cls(llm, enable_thinking=_bool_option(options, "enable_thinking"))

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
        chat = request.extra.get("kind", "chat") == "chat"
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
                    reason = self._sample(request, cancel, lambda text: post(_Step(text)))
                except Exception as exc:
                    post(_Step(error=exc))
                    return
                if reason is not None:
                    post(_Step(finish_reason=reason))

        worker = loop.run_in_executor(None, run)
        text, finished = "", False
        try:
            while True:
                step = await results.get()
                if step.error is not None:
                    finished = True
                    raise step.error
                text += step.text
                done = step.finish_reason is not None
                piece = builder.push(text, final=done)
                if piece.stopped or done:
                    finished = done
                    final = "stop" if piece.stopped or step.finish_reason == "stop" else "length"
                    yield GeneratedDelta(text=piece.content, reasoning=piece.reasoning, finish_reason=final)
                    return
                if piece.content or piece.reasoning:
                    yield GeneratedDelta(text=piece.content, reasoning=piece.reasoning)
        finally:
            cancel.set()
            if not finished:
                log.info("%s cancelled after %d characters", request.request_id, len(text))
            del worker  # the thread ends at its next token

    def _sample(self, request: GenerateRequest, cancel: threading.Event, emit: Callable[[str], None]) -> str | None:
        """Generate in the calling thread, token by token; ``emit`` gets the text of each token as it comes.

        Returns the finish reason, or None when ``cancel`` was set. This drives ``Llama.generate`` rather than
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
        reason = "length"
        # Sampling as create_completion's defaults (top_k=40, min_p=0.05) with the request's temperature/top_p.
        tokens = self.llm.generate(prompt, temp=request.temperature, top_p=request.top_p)
        for produced, token in enumerate(tokens, start=1):
            self.tokens_generated += 1
            if cancel.is_set():
                return None
            if llama_vocab_is_eog(vocab, token):
                reason = "stop"
                break
            if piece := decoder.decode(self.llm.detokenize([token])):
                emit(piece)
            if produced >= budget:
                break
        if tail := decoder.decode(b"", final=True):
            emit(tail)
        return reason


@dataclass(frozen=True, slots=True)
class _Step:
    """What the generating thread hands to ``generate``: new text, the finish reason, or the error it raised."""

    text: str = ""
    finish_reason: str | None = None
    error: Exception | None = None


def _bool_option(options: Mapping[str, Any], name: str) -> bool | None:
    value = options.get(name)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise ValueError(f"launch option {name!r} must be true or false, got {value!r}")


def _check_options(options: Mapping[str, Any]) -> None:
    reject_unknown_options(NAME, options, KNOWN_OPTIONS)
    for name in ("n_ctx", "n_threads"):
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not str(value).isdigit() or int(value) < 1):
            raise ValueError(f"launch option {name!r} must be a positive integer, got {value!r}")
    _bool_option(options, "enable_thinking")


@hookimpl
def xinfd_register_engines(register: RegisterEngine) -> None:
    register(
        EngineInfo(
            name=NAME,
            abilities=("chat", "generate"),
            description="GGUF models via llama-cpp-python",
            probe_module="llama_cpp",
        )
    )


@hookimpl
def xinfd_engine_dependencies(engine: str) -> list[str] | None:
    return list(REQUIREMENTS) if engine == NAME else None


@hookimpl
def xinfd_engine_build_env(engine: str) -> dict[str, dict[str, str]] | None:
    return {"llama-cpp-python": dict(BUILD_ENV)} if engine == NAME else None


@hookimpl
def xinfd_engine_availability(engine: str, model: ModelSpec, platform: Platform) -> Availability | None:
    if engine != NAME:
        return None
    return check_local_availability(NAME, ("llama_cpp",), model, platform)


@hookimpl
def xinfd_engine_launch(engine: str, model: ModelSpec, replica: ReplicaContext) -> LaunchSpec | None:
    if engine != NAME:
        return None
    _check_options(replica.options)
    location = weights_location(model, replica.options)
    if not location.endswith(".gguf"):
        raise ValueError(f"llama.cpp loads .gguf files; {location!r} is not one (use model_path=<file.gguf>)")
    return worker_launch_spec(replica, model)


@hookimpl
def xinfd_engine_load(
    engine: str, model: ModelSpec, replica: ReplicaContext
) -> TextModel | EmbeddingModel | None:
    if engine != NAME:
        return None
    return LlamaCppModel.load(weights_location(model, replica.options), replica.options)
