"""A test plugin for the model-venv tests, loaded through ``XINFD_PLUGINS``.

It registers the engine ``pkgver`` (hosted by xinfd's worker) whose model answers every request with what the
replica actually imports: the version and file of ``xinfdtestpkg`` and friends, ``sys.prefix`` and the
Python version. Its models pin packages from the test index named by ``XINFD_TEST_VENV_INDEX`` (a ``file://``
or loopback URL). ``echo-venv`` is a model of the ``echo`` engine (the ``xinfd-echo`` distribution, found
through its entry point) with a package list, so that a launch of it builds a venv.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

from xinfd.hookspecs import RegisterEngine, WorkerEngine, hookimpl
from xinfd.types import (
    Ability,
    Availability,
    ChatMessage,
    EmbeddingModel,
    GeneratedDelta,
    GenerateRequest,
    ModelSpec,
    Platform,
    RegisterModel,
    ReplicaContext,
    TextModel,
)

ENGINE = "pkgver"
INDEX_ENV = "XINFD_TEST_VENV_INDEX"
PROBED = ("xinfdtestpkg", "xinfdtestdep", "xinfdtestother", "pluggy", "aiohttp")


def _block(*packages: str) -> dict[str, Any]:
    return {"packages": list(packages), "index_url": os.environ.get(INDEX_ENV, "file:///nonexistent"),
            "inherit_pip_config": False}


MODELS = {
    "pinned-a": _block("xinfdtestpkg==1.0"),
    "pinned-b": _block("xinfdtestpkg==2.0"),
    "markers": _block(
        '#pkgver_dependencies# ; #engine# == "pkgver"',
        'xinfdtestother==1.0 ; #model_engine# == "vllm"',
        'xinfdtestpkg==1.0 ; sys_platform == "win32"',
        'xinfdtestpkg==2.0 ; sys_platform != "win32" and #engine# == "pkgver"',
        "#system_pluggy#",
    ),
    # Offered for pkgver (its marked entry: with venvs on, an engine needs one), with a placeholder no engine knows.
    "bad-placeholder": _block('#pkgver_dependencies# ; #engine# == "pkgver"', "#nosuch_dependencies#"),
}


class PkgverEngine(WorkerEngine):
    """Hosted by xinfd's worker; its model reports what the replica imports."""

    name = ENGINE
    abilities: tuple[Ability, ...] = ("chat", "generate")
    description = "reports the package versions its replica imports (venv tests)"
    probe_module = "xinfdtestpkg"

    def dependencies(self) -> list[str]:
        return ["xinfdtestdep==1.0"]

    def availability(self, model: ModelSpec, platform: Platform) -> Availability:
        return Availability(available=True)

    def load(self, model: ModelSpec, replica: ReplicaContext) -> TextModel | EmbeddingModel:
        return VersionModel()


@hookimpl
def xinfd_register_engines(register: RegisterEngine) -> None:
    register(PkgverEngine())


@hookimpl
def xinfd_register_models(register: RegisterModel) -> None:
    for name, block in MODELS.items():
        register(ModelSpec(name=name, abilities=("chat", "generate"), engines=(ENGINE,), virtualenv=block))
    register(ModelSpec(name="echo-venv", abilities=("chat", "generate"), engines=("echo",),
                       virtualenv=_block("xinfdtestpkg==2.0")))


def imported_versions() -> dict[str, Any]:
    """What this interpreter imports: {module: [version, file]} (None if absent), sys.prefix, its version."""
    found: dict[str, Any] = {"sys.prefix": sys.prefix, "python": platform.python_version()}
    for name in PROBED:
        try:
            module = importlib.import_module(name)
        except ImportError:
            found[name] = None
            continue
        found[name] = [getattr(module, "__version__", None), getattr(module, "__file__", None)]
    return found


class VersionModel:
    """Answers any prompt with ``imported_versions()`` as JSON."""

    context_window: int | None = None

    def render_chat(self, messages: list[ChatMessage], options: Mapping[str, Any]) -> str:
        return messages[-1].content if messages else ""

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GeneratedDelta]:
        yield GeneratedDelta(text=json.dumps(imported_versions()), finish_reason="stop")
