"""The xinfd plugin contract: the one file an engine-plugin author reads.

A plugin is a module (or object) with functions decorated by ``xinfd.hookspecs.hookimpl`` and named after the
specs below. Publish it under the entry-point group ``xinfd`` in your package's ``pyproject.toml``::

    [project.entry-points.xinfd]
    myengine = "my_package.plugin"

Rules of the contract:

* Hooks return data; the daemon performs every side effect. ``xinfd_engine_launch`` returns a frozen
  ``LaunchSpec`` and the daemon spawns, watches and stops the process.
* Hooks that take an ``engine`` argument are ``firstresult``: answer only for the engines you registered and
  return ``None`` for any other, so the next plugin is asked.
* Modules imported by the entry point use only the standard library and ``xinfd``'s public types
  (``xinfd.types``, ``xinfd.hookspecs``, ``xinfd.worker.launch``) at top level. Heavy imports (torch, vllm)
  belong inside ``xinfd_engine_load``, which runs in the replica process, never in the daemon.
* A plugin that fails to import is logged with its name and skipped; the daemon keeps running.

Every placeholder name in the virtualenv spec is derived from the engine name: ``#llama_cpp_dependencies#``
belongs to the engine ``llama.cpp`` (``.`` and ``-`` become ``_``).
"""

from __future__ import annotations

from typing import Any

import pluggy

from xinfd.types import (
    Availability,
    EmbeddingModel,
    LaunchSpec,
    ModelSpec,
    Platform,
    RegisterEngine,
    RegisterModel,
    ReplicaContext,
    TextModel,
)

PROJECT_NAME = "xinfd"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def xinfd_register_engines(register: RegisterEngine) -> None:
    """Declare the engines this plugin provides.

    :param register: call it once per engine with an ``EngineInfo``. Registering a name that another plugin
        already registered is an error reported at start-up (the second plugin is skipped).
    :return: nothing; all plugins are called.
    """


@hookspec
def xinfd_register_models(register: RegisterModel) -> None:
    """Declare model families this plugin ships (for example the ``echo`` model of the example plugin).

    :param register: call it once per family with a ``ModelSpec``. Builtin families from ``etc/models`` and user
        registrations are added by the core, not through this hook.
    :return: nothing; all plugins are called.
    """


@hookspec(firstresult=True)
def xinfd_engine_dependencies(engine: str) -> list[str] | None:
    """What the placeholder ``#<engine>_dependencies#`` expands to in a model's virtualenv package list.

    :param engine: lowercase engine name.
    :return: PEP 508 requirement strings (markers allowed), or ``None`` if ``engine`` is not yours.
        ``firstresult``: the first non-``None`` answer wins.
    """


@hookspec(firstresult=True)
def xinfd_engine_build_env(engine: str) -> dict[str, dict[str, str]] | None:
    """How packages of ``engine``'s dependencies must be built when a model venv installs them.

    For a package listed here the venv builder never takes a prebuilt wheel: it builds it from source once,
    with these environment variables set, and keeps the wheel in the wheel cache (``XINFD_WHEEL_CACHE``) for
    every later venv. Use it for packages whose default build is not portable, e.g. llama-cpp-python, which
    compiles for the build machine's CPU unless ``CMAKE_ARGS="-DGGML_NATIVE=OFF"``.

    :param engine: lowercase engine name.
    :return: distribution name -> environment variables for its build, or ``None`` if ``engine`` is not
        yours (or it needs nothing special). ``firstresult``.
    """


@hookspec(firstresult=True)
def xinfd_engine_availability(engine: str, model: ModelSpec, platform: Platform) -> Availability | None:
    """Whether ``engine`` can serve ``model`` on this host.

    Runs in the daemon: check only what the host has (GPUs, OS, importability of optional packages through
    ``importlib.util.find_spec``), never import the engine library itself.

    :param engine: lowercase engine name.
    :param model: the model family asked for.
    :param platform: host facts, including the GPU inventory.
    :return: ``Availability(available=False, reason="vllm needs an NVIDIA GPU; none found")`` style answers,
        or ``None`` if ``engine`` is not yours. ``firstresult``.
    """


@hookspec(firstresult=True)
def xinfd_engine_launch(engine: str, model: ModelSpec, replica: ReplicaContext) -> LaunchSpec | None:
    """Describe the process that serves one replica.

    Engines hosted by xinfd's own worker return ``xinfd.worker.launch.worker_launch_spec(replica)``; engines
    with their own OpenAI-compatible server (vLLM, SGLang) return its command line, serving on
    ``replica.socket_path``. Environment variables for the GPUs (``CUDA_VISIBLE_DEVICES``) and the user's
    ``--env`` values are added by the daemon. A server that cannot listen on a Unix socket listens on
    ``127.0.0.1:replica.port`` and sets ``listen="tcp"``.

    :raises ValueError: for an invalid launch option (message naming it); the user gets a 400.
    :return: a ``LaunchSpec``, or ``None`` if ``engine`` is not yours. ``firstresult``.
    """


@hookspec(firstresult=True)
def xinfd_engine_load(
    engine: str, model: ModelSpec, replica: ReplicaContext
) -> TextModel | EmbeddingModel | None:
    """Load the model inside the replica process (only for engines hosted by xinfd's worker).

    Heavy imports belong here. The worker host serves the returned object: HTTP, streaming, cancellation and
    health are its job, not the engine's.

    :return: an object implementing ``TextModel`` or ``EmbeddingModel``, or ``None`` if ``engine`` is not yours.
        ``firstresult``. Raising an exception fails the replica's start with that message.
    """


def hook_names() -> list[str]:
    """Names of every hookspec (used by the contract test that checks each one is documented)."""
    return [name for name, value in globals().items() if name.startswith("xinfd_") and callable(value)]


__all__: list[Any] = [
    "PROJECT_NAME",
    "hook_names",
    "hookimpl",
    "hookspec",
    "xinfd_engine_availability",
    "xinfd_engine_build_env",
    "xinfd_engine_dependencies",
    "xinfd_engine_launch",
    "xinfd_engine_load",
    "xinfd_register_engines",
    "xinfd_register_models",
]
