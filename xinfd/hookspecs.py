"""The xinfd plugin contract: the one file an engine-plugin author reads (with the data types of ``xinfd.types``).

A plugin is a module (or object) with functions decorated by ``xinfd.hookspecs.hookimpl`` and named after the
two hookspecs below. Publish it under the entry-point group ``xinfd`` in your package's ``pyproject.toml``::

    [project.entry-points.xinfd]
    myengine = "my_package.plugin"

pluggy only finds plugins. What a plugin provides is **engine objects**, each implementing the ``Engine``
protocol below, handed to the core through ``xinfd_register_engines``; the core keeps a name -> engine map and
calls the engine's methods. An engine never sees a request for another engine, so no method takes an engine
name. ``WorkerEngine`` and ``ServerEngine`` are small base classes with the usual defaults.

Rules of the contract:

* Engines return data; the daemon performs every side effect. ``Engine.launch`` returns a frozen
  ``LaunchSpec`` and the daemon spawns, watches and stops the process.
* Modules imported by the entry point use only the standard library and ``xinfd``'s public types
  (``xinfd.types``, ``xinfd.hookspecs``) at top level. Heavy imports (torch, vllm) belong inside
  ``Engine.load``, which runs in the replica process, never in the daemon.
* A plugin that fails to import, registers an object that lacks part of ``Engine``, or implements a hook
  this file does not define is logged with its name and skipped; the daemon keeps running.
* Settings the daemon hands to replicas (batching) arrive in ``ReplicaContext.settings``;
  engines never read the daemon's ``XINFERENCE_*`` variables from their environment.

Every placeholder name in the virtualenv spec is derived from the engine name: ``#llama_cpp_dependencies#``
belongs to the engine ``llama.cpp`` (``.`` and ``-`` become ``_``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import pluggy

from xinfd.replica_launch import worker_launch_spec
from xinfd.types import (
    Ability,
    Availability,
    LaunchSpec,
    LoadedModel,
    ModelSpec,
    Platform,
    RegisterModel,
    ReplicaContext,
)

PROJECT_NAME = "xinfd"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

# Hooks of the first contract, which dispatched on an engine name. A plugin that still implements one is
# refused with a message naming the new contract (no plugin in the wild used them, so there is no shim).
REMOVED_HOOKS = (
    "xinfd_engine_dependencies",
    "xinfd_engine_build_env",
    "xinfd_engine_availability",
    "xinfd_engine_launch",
    "xinfd_engine_load",
)


class Engine(Protocol):
    """One engine: what it serves, what it needs installed, whether it runs here, and how a replica starts.

    ``name`` is the lowercase engine name used in launch requests, placeholders (``#<name>_dependencies#``,
    with ``.`` and ``-`` turned into ``_``) and venv markers (``#engine# == "<name>"``). ``abilities`` are the
    endpoints it can serve; ``description`` is shown by ``xinfctl engines``. ``probe_module`` is imported
    inside a model's venv after it is built, to prove the engine's packages work there (``None``: no probe).
    ``loads_weights_folder``: the engine loads a folder of weights, so when a model names only a hub id the
    daemon downloads that repo (from the configured model source) and passes the folder as the launch option
    ``model_path``; ``False`` for engines that need one file (llama.cpp's ``.gguf``) or no weights at all.
    ``launch_options`` names every launch option the engine accepts; the daemon refuses any other with a 400
    before ``launch`` is called. ``None`` means the engine checks option names itself in ``launch`` (vLLM and
    SGLang pass unknown names through to their servers as flags).
    ``request_features`` names the optional OpenAI request fields the engine honours (see
    ``xinfd.openai_protocol.REQUEST_FEATURES``: ``"logprobs"`` covers ``logprobs``/``top_logprobs``); the daemon
    and the worker host refuse any other such field with a 400 naming it and the engine, so no field is
    silently ignored. ``None`` means the engine's own server sees every field (vLLM, SGLang): nothing is
    checked. Optional: an engine without the attribute honours none (``frozenset()``).
    """

    name: str
    abilities: tuple[Ability, ...]
    description: str
    probe_module: str | None
    loads_weights_folder: bool
    launch_options: frozenset[str] | None

    def dependencies(self) -> list[str]:
        """What the placeholder ``#<name>_dependencies#`` expands to in a model's virtualenv package list.

        :return: PEP 508 requirement strings (markers allowed); ``[]`` for an engine with nothing to install.
        """
        ...

    def build_env(self) -> dict[str, dict[str, str]]:
        """How packages among the engine's dependencies must be built when a model venv installs them.

        For a package listed here the venv builder never takes a prebuilt wheel: it builds it from source once,
        with these environment variables set, and keeps the wheel in the wheel cache (``XINFD_WHEEL_CACHE``)
        for every later venv. Use it for packages whose default build is not portable, e.g. llama-cpp-python,
        which compiles for the build machine's CPU unless ``CMAKE_ARGS="-DGGML_NATIVE=OFF"``.

        :return: distribution name -> environment variables for its build; ``{}`` when nothing is special.
        """
        ...

    def availability(self, model: ModelSpec, platform: Platform) -> Availability:
        """Whether this engine can serve ``model`` on this host.

        Runs in the daemon: check only what the host has (GPUs, OS, importability of optional packages through
        ``importlib.util.find_spec``), never import the engine library itself. An exception counts as
        "unavailable" with its message as the reason.

        :param model: the model family asked for.
        :param platform: host facts, including the GPU inventory.
        :return: e.g. ``Availability(available=False, reason="vllm needs an NVIDIA GPU; none found")``.
        """
        ...

    def launch(self, model: ModelSpec, replica: ReplicaContext) -> LaunchSpec:
        """Describe the process that serves one replica (the daemon also calls it with ``replica.port == 0``
        only to validate a launch request before anything starts).

        Engines hosted by xinfd's worker return ``worker_launch_spec(replica, model)`` (``WorkerEngine`` does);
        engines with their own OpenAI-compatible server (vLLM, SGLang) return its command line, serving on
        ``replica.socket_path``, or on ``127.0.0.1:replica.port`` with ``listen="tcp"`` when the server cannot
        listen on a Unix socket. Environment variables for the GPUs (``CUDA_VISIBLE_DEVICES``) and the user's
        ``--env`` values are added by the daemon. Launch options the server takes per request rather than as a
        flag (``enable_thinking``) go into ``LaunchSpec.chat_template_kwargs``.

        :param model: the model family being launched.
        :param replica: where and how this replica runs; ``replica.options`` are the user's launch options.
        :raises ValueError: for an invalid launch option (message naming it); the user gets a 400.
        :return: the process to spawn.
        """
        ...

    def load(self, model: ModelSpec, replica: ReplicaContext) -> LoadedModel:
        """Load the model inside the replica process (engines hosted by xinfd's worker only).

        Heavy imports belong here. The worker host serves the returned object: HTTP, streaming, cancellation and
        health are its job, not the engine's. Engines with their own server never have it called.

        :param model: the model family being served.
        :param replica: this replica's context: options, ``cache_dir`` for derived weights, ``settings``.
        :raises Exception: any exception fails the replica's start with its message.
        :return: an object implementing ``TextModel``, ``EmbeddingModel``, ``RerankModel`` or ``ImageModel``.
        """
        ...


RegisterEngine = Callable[[Engine], None]


class _EngineDefaults:
    """The optional members of ``Engine``, with the defaults most engines want."""

    name: str
    abilities: tuple[Ability, ...]
    description: str = ""
    probe_module: str | None = None
    loads_weights_folder: bool = False
    launch_options: frozenset[str] | None = frozenset()
    request_features: frozenset[str] | None = frozenset()

    def dependencies(self) -> list[str]:
        return []

    def build_env(self) -> dict[str, dict[str, str]]:
        return {}


class WorkerEngine(_EngineDefaults):
    """Base for engines served by xinfd's worker host: set ``name`` and ``abilities``, implement
    ``availability`` and ``load``, and override ``check_launch`` to validate option values in the daemon.

    ``preload_modules``: the modules ``load`` imports that take long (torch, transformers). CPU replicas of the
    engine then fork from a process that imported them once (``xinfd.forkserver``), so a launch, a scale-up or
    a restart skips them. List only modules that start no threads and touch no GPU when imported.
    """

    preload_modules: tuple[str, ...] = ()

    def check_launch(self, model: ModelSpec, replica: ReplicaContext) -> None:
        """Validate the launch option values in the daemon, so a bad one is a 400, not a replica that fails.

        :param model: the model family being launched.
        :param replica: the replica's context; ``replica.options`` holds the option values to check.
        :raises ValueError: naming the bad option.
        """

    def launch(self, model: ModelSpec, replica: ReplicaContext) -> LaunchSpec:
        self.check_launch(model, replica)
        return worker_launch_spec(replica, model, preload=self.preload_modules)


class ServerEngine(_EngineDefaults):
    """Base for engines that run their own OpenAI-compatible server: implement ``availability`` and ``launch``.

    Option names are the engine's to check (its server takes flags xinfd does not list), hence
    ``launch_options = None``.
    """

    launch_options: frozenset[str] | None = None
    request_features: frozenset[str] | None = None  # the engine's server validates its own request fields

    def load(self, model: ModelSpec, replica: ReplicaContext) -> LoadedModel:
        raise RuntimeError(f"engine {self.name!r} runs its own server; xinfd's worker host does not load it")


ENGINE_ATTRIBUTES = ("name", "abilities", "description", "probe_module", "loads_weights_folder", "launch_options")
ENGINE_METHODS = ("dependencies", "build_env", "availability", "launch", "load")


@hookspec
def xinfd_register_engines(register: RegisterEngine) -> None:
    """Declare the engines this plugin provides.

    :param register: call it once per engine with an object implementing ``Engine`` (usually one module-level
        instance per engine module). Registering a name that another plugin already registered, or an object
        missing part of ``Engine``, is an error reported at start-up (the plugin is skipped).
    :return: nothing; all plugins are called.
    """


@hookspec
def xinfd_register_models(register: RegisterModel) -> None:
    """Declare model families this plugin ships (for example the ``echo`` model of the example plugin).

    :param register: call it once per family with a ``ModelSpec``. Builtin families from ``etc/models`` and user
        registrations are added by the core, not through this hook.
    :return: nothing; all plugins are called.
    """


def hook_names() -> list[str]:
    """Names of every hookspec (used by the contract test that checks each one is documented)."""
    return [name for name, value in globals().items() if name.startswith("xinfd_") and callable(value)]


def contract_functions() -> list[Callable[..., Any]]:
    """Every function of the contract whose docstring must document its arguments: hooks and ``Engine`` methods."""
    hooks: list[Callable[..., Any]] = [globals()[name] for name in hook_names()]
    return hooks + [getattr(Engine, name) for name in ENGINE_METHODS]


__all__ = [
    "ENGINE_ATTRIBUTES",
    "ENGINE_METHODS",
    "PROJECT_NAME",
    "REMOVED_HOOKS",
    "Engine",
    "RegisterEngine",
    "ServerEngine",
    "WorkerEngine",
    "contract_functions",
    "hook_names",
    "hookimpl",
    "hookspec",
    "worker_launch_spec",
    "xinfd_register_engines",
    "xinfd_register_models",
]
