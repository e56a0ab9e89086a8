"""The ``echo`` engine and its plugin hooks: a template for xinfd engine plugins (copy this file).

A plugin is two things: an **engine object** implementing ``xinfd.hookspecs.Engine`` (here ``EchoEngine``),
and a hook that hands it to the daemon (``xinfd_register_engines``). The daemon keeps engines by name and
calls their methods; an engine never sees another engine's requests, so nothing here checks an engine name.

This module is imported by the daemon (through the ``xinfd`` entry point), so its top-level imports are the
standard library and xinfd's public types only. Anything heavy (for a real engine: torch, a tokenizer, the
inference library) is imported inside ``load``, which runs in the replica process.
"""

from __future__ import annotations

import dataclasses

from xinfd.hookspecs import RegisterEngine, WorkerEngine, hookimpl
from xinfd.types import (
    Ability,
    Availability,
    EmbeddingModel,
    ModelSpec,
    Platform,
    RegisterModel,
    ReplicaContext,
    TextModel,
)
from xinfd_echo.options import EchoOptions

NAME = "echo"


class EchoEngine(WorkerEngine):
    """An engine served by xinfd's worker host: ``WorkerEngine`` supplies ``launch`` (the worker's command
    line, after ``check_launch``), so an engine like this one writes ``availability`` and ``load`` only."""

    # The name used in launch requests (``xinfctl launch echo -e echo``), in ``#echo_dependencies#`` and in
    # venv markers (``#engine# == "echo"``).
    name = NAME
    # The endpoints it serves: chat -> /v1/chat/completions, generate -> /v1/completions (embed: embeddings).
    abilities: tuple[Ability, ...] = ("chat", "generate")
    # Shown by ``xinfctl engines``.
    description = "Deterministic engine that streams the prompt back; for tests, and a plugin template"
    # Imported inside a model's venv once it is built, to prove the engine's packages work there.
    probe_module = "xinfd_echo"
    # True for engines that load a folder of weights: the daemon then downloads a hub-only model first and
    # passes the folder as the launch option ``model_path``. Echo has no weights.
    loads_weights_folder = False
    # Every launch option echo accepts; the daemon refuses any other with a 400 naming it, before ``launch``.
    launch_options = frozenset(f.name for f in dataclasses.fields(EchoOptions))
    # Optional OpenAI request fields echo honours (xinfd.request_features); any other is a 400 naming it.
    # Echo's logprobs are made up (deterministic, for tests of the response shapes), see EchoModel.
    request_features = frozenset({"logprobs"})

    def dependencies(self) -> list[str]:
        """What ``#echo_dependencies#`` expands to in a venv spec: nothing, echo is pure Python."""
        return []

    # ``build_env`` (packages to build from source, with their build variables) keeps WorkerEngine's ``{}``.

    def availability(self, model: ModelSpec, platform: Platform) -> Availability:
        """Look at the host only (GPUs, OS); a real engine says e.g. "vllm needs an NVIDIA GPU; none found"."""
        return Availability(available=True, reason="pure Python, no accelerator needed")

    def check_launch(self, model: ModelSpec, replica: ReplicaContext) -> None:
        """Check option values in the daemon: a bad one is a 400 at launch, not a replica that fails to start.

        ``launch`` (from ``WorkerEngine``) calls this, then returns ``worker_launch_spec(replica, model)``: data,
        not a process; the daemon spawns, watches and stops what it describes. An engine with its own OpenAI
        server (vLLM) subclasses ``ServerEngine`` instead and returns that server's command line.
        """
        EchoOptions.from_mapping(replica.options)

    def load(self, model: ModelSpec, replica: ReplicaContext) -> TextModel | EmbeddingModel:
        """Runs inside the replica process: the place for heavy imports and for loading weights.

        Raising fails the replica's start; the message reaches the user through the daemon's launch error.
        Settings the daemon gives replicas (``replica.settings``: batching) and the cache for
        derived weights (``replica.cache_dir``) are in the context, never in environment variables.
        """
        from xinfd_echo.model import EchoModel  # deferred: the daemon never needs it

        return EchoModel.load(EchoOptions.from_mapping(replica.options))


# One instance per engine, registered by the hook below.
ENGINE = EchoEngine()


@hookimpl
def xinfd_register_engines(register: RegisterEngine) -> None:
    """Hand the engine object to the daemon (pluggy finds this hook through the ``xinfd`` entry point)."""
    register(ENGINE)


@hookimpl
def xinfd_register_models(register: RegisterModel) -> None:
    """Ship a model family of our own, so ``xinfctl launch echo`` works with no registry entry."""
    register(
        ModelSpec(
            name="echo",
            abilities=("chat", "generate"),
            engines=(NAME,),
            context_length=4096,
            description="Echoes the last user message (or the prompt) back, one word-like token at a time",
            # Nothing to install: the echo engine is this package, already importable in every venv.
            virtualenv={"packages": []},
        )
    )
