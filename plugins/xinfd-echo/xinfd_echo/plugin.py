"""Hook implementations of the ``echo`` engine: a template for xinfd engine plugins.

This module is imported by the daemon (through the ``xinfd`` entry point), so its top-level imports are the
standard library and xinfd's public types only. Anything heavy (for a real engine: torch, a tokenizer, the
inference library) is imported inside ``xinfd_engine_load``, which runs in the replica process.

Every hook that takes an ``engine`` argument is ``firstresult``: answer for your own engine and return
``None`` for any other, so that pluggy goes on to ask the next plugin.
"""

from __future__ import annotations

from xinfd.hookspecs import hookimpl
from xinfd.types import (
    Availability,
    EmbeddingModel,
    EngineInfo,
    LaunchSpec,
    ModelSpec,
    Platform,
    RegisterEngine,
    RegisterModel,
    ReplicaContext,
    TextModel,
)
from xinfd.worker.launch import worker_launch_spec

ENGINE = "echo"


@hookimpl
def xinfd_register_engines(register: RegisterEngine) -> None:
    """Declare the engine. ``probe_module`` is imported inside a model's venv to prove the engine works."""
    register(
        EngineInfo(
            name=ENGINE,
            abilities=("chat", "generate"),
            description="Deterministic engine that streams the prompt back; for tests, and a plugin template",
            probe_module="xinfd_echo",
        )
    )


@hookimpl
def xinfd_register_models(register: RegisterModel) -> None:
    """Ship a model family of our own, so ``xinfctl launch echo`` works with no registry entry."""
    register(
        ModelSpec(
            name="echo",
            abilities=("chat", "generate"),
            engines=(ENGINE,),
            context_length=4096,
            description="Echoes the last user message (or the prompt) back, one word-like token at a time",
            # Nothing to install: the echo engine is this package, already importable in every venv.
            virtualenv={"packages": []},
        )
    )


@hookimpl
def xinfd_engine_dependencies(engine: str) -> list[str] | None:
    """What ``#echo_dependencies#`` expands to in a venv spec: nothing, echo is pure Python."""
    return [] if engine == ENGINE else None


@hookimpl
def xinfd_engine_availability(engine: str, model: ModelSpec, platform: Platform) -> Availability | None:
    """Look at the host only (GPUs, OS); a real engine says e.g. "vllm needs an NVIDIA GPU; none found"."""
    if engine != ENGINE:
        return None
    return Availability(available=True, reason="pure Python, no accelerator needed")


@hookimpl
def xinfd_engine_launch(engine: str, model: ModelSpec, replica: ReplicaContext) -> LaunchSpec | None:
    """Return data, not a process: the daemon spawns, watches and stops what this describes.

    Engines served by xinfd's worker host use ``worker_launch_spec``; an engine with its own OpenAI server
    (vLLM) would return that server's command line, serving on ``replica.socket_path``.
    """
    if engine != ENGINE:
        return None
    return worker_launch_spec(replica, model)


@hookimpl
def xinfd_engine_load(
    engine: str, model: ModelSpec, replica: ReplicaContext
) -> TextModel | EmbeddingModel | None:
    """Runs inside the replica process: the place for heavy imports and for loading weights.

    Raising fails the replica's start; the message reaches the user through the daemon's launch error.
    """
    if engine != ENGINE:
        return None
    from xinfd_echo.model import EchoModel, EchoOptions  # deferred: the daemon never needs it

    return EchoModel.load(EchoOptions.from_mapping(replica.options))
