"""Fixtures for the builtin engine plugins: a plugin manager with explicit plugins, and data factories.

The plugins are loaded by the daemon's own ``make_plugin_manager`` with the two engine modules given explicitly
(no entry points), so an engine object that breaks the ``Engine`` protocol fails here exactly as it would at
daemon start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import pytest
from xinfd_engines import sglang, vllm

from xinfd.plugins import Plugins, make_plugin_manager
from xinfd.types import GpuInfo, LaunchSpec, ModelSpec, Platform, ReplicaContext

A100 = GpuInfo(index=0, name="NVIDIA A100-SXM4-80GB", memory_mb=81920)
A100_1 = GpuInfo(index=1, name="NVIDIA A100-SXM4-80GB", memory_mb=81920)


@pytest.fixture
def plugins() -> Plugins:
    loaded = make_plugin_manager(load_entrypoints=False, plugins=[vllm, sglang], env={})
    assert not loaded.failures, loaded.failures
    return loaded


def make_platform(**overrides: Any) -> Platform:
    values: dict[str, Any] = {
        "system": "Linux",
        "machine": "x86_64",
        "python_version": "3.11.9",
        "gpus": (A100,),
        "nvml_available": True,
        "venv_enabled": True,
    }
    values.update(overrides)
    return Platform(**values)


def make_model(**overrides: Any) -> ModelSpec:
    values: dict[str, Any] = {
        "name": "qwen2.5-instruct",
        "abilities": ("chat", "generate"),
        "engines": ("vllm", "sglang", "transformers"),
        "extra": {"model_id": "Qwen/Qwen2.5-7B-Instruct"},
    }
    values.update(overrides)
    return ModelSpec(**values)


def make_replica(
    engine: str = "vllm",
    *,
    gpus: tuple[int, ...] = (0,),
    options: Mapping[str, Any] | None = None,
    port: int = 0,
) -> ReplicaContext:
    return ReplicaContext(
        model_uid="qwen-1",
        model_name="qwen2.5-instruct",
        engine=engine,
        replica_index=0,
        socket_path="/run/xinfd/replicas/qwen-1-0.sock",
        python="/var/lib/xinfd/virtualenv/v4/qwen2.5-instruct/vllm/3.11.9/bin/python",
        gpu_indices=gpus,
        options=dict(options or {}),
        port=port,
    )


@pytest.fixture
def platform() -> Callable[..., Platform]:
    return make_platform


@pytest.fixture
def model() -> Callable[..., ModelSpec]:
    return make_model


@pytest.fixture
def replica() -> Callable[..., ReplicaContext]:
    return make_replica


def launch(module: ModuleType, model: ModelSpec, replica: ReplicaContext) -> LaunchSpec:
    """Launch through the daemon's facade (``Plugins.launch_spec``), so an unknown option or a bad value is the
    ``InvalidRequestError`` (400) a user gets, whichever check (generic or the engine's) refuses it."""
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[module], env={})
    assert not plugins.failures, plugins.failures
    return plugins.launch_spec(module.ENGINE.name, model, replica)
