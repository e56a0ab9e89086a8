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
import logging
import os
import threading
from collections.abc import AsyncIterator, Mapping
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
        self.tokens_generated = 0

    @classmethod
    def load(cls, path: str, options: Mapping[str, Any]) -> LlamaCppModel:
        from llama_cpp import Llama  # type: ignore[import-not-found,unused-ignore]

        llm = Llama(
            model_path=path,
            n_ctx=int(options.get("n_ctx") or 4096),
            n_threads=int(options.get("n_threads") or os.environ.get("OMP_NUM_THREADS") or 1),
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
        results: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()
        cancel = threading.Event()
        chat = request.extra.get("kind", "chat") == "chat"
        builder = DeltaBuilder(
            stop=request.stop,
            parse_reasoning=self.parse_reasoning and chat,
            starts_in_reasoning=prompt_opens_reasoning(request.prompt),
        )

        def run() -> None:
            with self._lock:  # one sequence at a time per Llama object
                reason: str | None = "length"
                try:
                    for chunk in self.llm.create_completion(
                        self._encode(request.prompt),
                        max_tokens=request.max_tokens,
                        temperature=request.temperature,
                        top_p=request.top_p,
                        seed=request.seed,
                        stream=True,
                    ):
                        if cancel.is_set():
                            return
                        self.tokens_generated += 1
                        choice = chunk["choices"][0]
                        reason = choice.get("finish_reason")
                        loop.call_soon_threadsafe(results.put_nowait, (choice.get("text") or "", None))
                        if reason:
                            break
                finally:
                    loop.call_soon_threadsafe(results.put_nowait, ("", reason or "length"))

        worker = loop.run_in_executor(None, run)
        text, finished = "", False
        try:
            while True:
                part, reason = await results.get()
                text += part
                done = reason is not None
                piece = builder.push(text, final=done)
                if piece.stopped or done:
                    finished = done
                    final = "stop" if piece.stopped or reason == "stop" else "length"
                    yield GeneratedDelta(text=piece.content, reasoning=piece.reasoning, finish_reason=final)
                    return
                if piece.content or piece.reasoning:
                    yield GeneratedDelta(text=piece.content, reasoning=piece.reasoning)
        finally:
            cancel.set()
            if not finished:
                log.info("%s cancelled after %d characters", request.request_id, len(text))
            del worker  # the thread ends at its next token


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
