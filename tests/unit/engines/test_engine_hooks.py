"""Registration, dependencies and availability of the builtin vllm and sglang engines, through the hooks."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pluggy
import pytest
from packaging.requirements import Requirement
from xinfd_engines import _common, sglang, vllm

from xinfd.types import EngineInfo, GpuInfo, ModelSpec, Platform, ReplicaContext

ROOT = Path(__file__).resolve().parents[3]
ENGINES = ("vllm", "sglang")


def registered(pm: pluggy.PluginManager) -> dict[str, EngineInfo]:
    found: dict[str, EngineInfo] = {}
    pm.hook.xinfd_register_engines(register=lambda info: found.setdefault(info.name, info))
    return found


def test_both_engines_register_with_their_abilities(pm: pluggy.PluginManager) -> None:
    engines = registered(pm)
    assert set(engines) == {"vllm", "sglang"}
    assert engines["vllm"].abilities == ("chat", "generate", "embed")
    assert engines["sglang"].abilities == ("chat", "generate")
    assert engines["vllm"].probe_module == "vllm"
    assert engines["sglang"].probe_module == "sglang"
    assert all(info.description for info in engines.values())


def test_hooks_answer_none_for_other_engines(
    pm: pluggy.PluginManager,
    model: Callable[..., ModelSpec],
    platform: Callable[..., Platform],
    replica: Callable[..., ReplicaContext],
) -> None:
    # firstresult hooks: None from every plugin means "not mine", so the next plugin would be asked.
    assert pm.hook.xinfd_engine_dependencies(engine="transformers") is None
    assert (
        pm.hook.xinfd_engine_availability(engine="transformers", model=model(), platform=platform()) is None
    )
    assert pm.hook.xinfd_engine_launch(engine="echo", model=model(), replica=replica("echo")) is None
    for plugin in (vllm, sglang):
        assert plugin.xinfd_engine_dependencies(engine="llama.cpp") is None
        assert plugin.xinfd_engine_availability(engine="mlx", model=model(), platform=platform()) is None
        assert plugin.xinfd_engine_launch(engine="transformers", model=model(), replica=replica()) is None


def test_each_plugin_answers_only_for_its_own_engine(pm: pluggy.PluginManager) -> None:
    # Called directly: through pm.hook the other plugin would answer.
    assert pm.get_plugin("vllm") is vllm and pm.get_plugin("sglang") is sglang
    assert vllm.xinfd_engine_dependencies(engine="sglang") is None
    assert sglang.xinfd_engine_dependencies(engine="vllm") is None


@pytest.mark.parametrize("engine", ENGINES)
def test_dependencies_are_pep508_requirements_for_linux(pm: pluggy.PluginManager, engine: str) -> None:
    deps = pm.hook.xinfd_engine_dependencies(engine=engine)
    assert isinstance(deps, list) and deps
    requirements = [Requirement(dep) for dep in deps]
    assert [r.name for r in requirements] == [engine]
    for req in requirements:
        assert req.marker is not None
        # evaluate() layers the given keys over this interpreter's environment.
        assert req.marker.evaluate({"sys_platform": "linux"})
        assert not req.marker.evaluate({"sys_platform": "darwin"})


def test_vllm_floor_has_the_uds_flag(pm: pluggy.PluginManager) -> None:
    (req,) = (Requirement(d) for d in pm.hook.xinfd_engine_dependencies(engine="vllm"))
    # --uds (used by the launch spec) exists from 0.10.2 on; 0.10.1 must not satisfy the requirement.
    assert "0.10.2" in req.specifier
    assert "0.10.1" not in req.specifier


def test_sglang_dependency_pulls_the_server_runtime(pm: pluggy.PluginManager) -> None:
    (req,) = (Requirement(d) for d in pm.hook.xinfd_engine_dependencies(engine="sglang"))
    assert req.extras == {"all"}
    assert "0.4" in req.specifier


def test_dependencies_return_a_fresh_list(pm: pluggy.PluginManager) -> None:
    first = pm.hook.xinfd_engine_dependencies(engine="vllm")
    first.append("junk")
    assert "junk" not in pm.hook.xinfd_engine_dependencies(engine="vllm")


# ----------------------------------------------------------------------------------------------------------
# Availability


@pytest.mark.parametrize("engine", ENGINES)
def test_available_with_a_declared_gpu(
    pm: pluggy.PluginManager, engine: str, model: Callable[..., ModelSpec], platform: Callable[..., Platform]
) -> None:
    declared = (
        GpuInfo(index=0, name="declared-0", memory_mb=24576),
        GpuInfo(index=1, name="d1", memory_mb=1),
    )
    result = pm.hook.xinfd_engine_availability(
        engine=engine, model=model(), platform=platform(gpus=declared, nvml_available=False)
    )
    assert result.available
    assert result.reason.startswith("ready")
    assert "2 NVIDIA GPU(s)" in result.reason


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("nvml", [True, False])
def test_unavailable_without_a_gpu(
    pm: pluggy.PluginManager,
    engine: str,
    nvml: bool,
    model: Callable[..., ModelSpec],
    platform: Callable[..., Platform],
) -> None:
    result = pm.hook.xinfd_engine_availability(
        engine=engine, model=model(), platform=platform(gpus=(), nvml_available=nvml)
    )
    state = "available" if nvml else "not available"
    assert not result.available
    assert result.reason == f"{engine} needs an NVIDIA GPU; none found (NVML: {state})"


@pytest.mark.parametrize("engine", ENGINES)
def test_unavailable_off_linux_even_before_the_gpu_check(
    pm: pluggy.PluginManager, engine: str, model: Callable[..., ModelSpec], platform: Callable[..., Platform]
) -> None:
    result = pm.hook.xinfd_engine_availability(
        engine=engine, model=model(), platform=platform(system="Darwin", machine="arm64", gpus=())
    )
    assert not result.available
    assert result.reason == f"{engine} needs Linux with an NVIDIA GPU; this host runs Darwin"


@pytest.mark.parametrize("engine", ENGINES)
def test_unavailable_when_venvs_are_off_and_not_installed(
    pm: pluggy.PluginManager,
    engine: str,
    model: Callable[..., ModelSpec],
    platform: Callable[..., Platform],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_common, "is_importable", lambda module: False)
    result = pm.hook.xinfd_engine_availability(
        engine=engine, model=model(), platform=platform(venv_enabled=False)
    )
    assert not result.available
    assert result.reason == (
        f"{engine} is not installed in the daemon's environment and model virtual environments are disabled "
        "(XINFERENCE_ENABLE_VIRTUAL_ENV=0)"
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_available_when_venvs_are_off_but_installed(
    pm: pluggy.PluginManager,
    engine: str,
    model: Callable[..., ModelSpec],
    platform: Callable[..., Platform],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # A stand-in package on sys.path: find_spec locates it without importing it (its body would fail).
    package = tmp_path / engine
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('the daemon must not import engine packages')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = pm.hook.xinfd_engine_availability(
        engine=engine, model=model(), platform=platform(venv_enabled=False)
    )
    assert result.available
    assert f"{engine} is installed in the daemon's environment" in result.reason
    assert engine not in sys.modules


def test_venv_check_is_skipped_when_venvs_are_on(
    pm: pluggy.PluginManager,
    model: Callable[..., ModelSpec],
    platform: Callable[..., Platform],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_common, "is_importable", lambda module: False)
    result = pm.hook.xinfd_engine_availability(
        engine="vllm", model=model(), platform=platform(venv_enabled=True)
    )
    assert result.available
    assert "virtual environment" in result.reason


@pytest.mark.parametrize("engine", ENGINES)
def test_unavailable_for_a_model_without_the_engine(
    pm: pluggy.PluginManager, engine: str, model: Callable[..., ModelSpec], platform: Callable[..., Platform]
) -> None:
    spec = model(name="bge-m3", engines=("sentence_transformers", "transformers"))
    result = pm.hook.xinfd_engine_availability(engine=engine, model=spec, platform=platform())
    assert not result.available
    assert result.reason == (
        f"model bge-m3 does not support engine {engine} (supported: sentence_transformers, transformers)"
    )


def test_model_with_no_engines_says_none(
    pm: pluggy.PluginManager, model: Callable[..., ModelSpec], platform: Callable[..., Platform]
) -> None:
    result = pm.hook.xinfd_engine_availability(engine="vllm", model=model(engines=()), platform=platform())
    assert result.reason == "model qwen2.5-instruct does not support engine vllm (supported: none)"


def test_host_reasons_come_before_model_reasons(
    pm: pluggy.PluginManager, model: Callable[..., ModelSpec], platform: Callable[..., Platform]
) -> None:
    # The model does not list sglang either, but the missing GPU is what the operator must fix first.
    result = pm.hook.xinfd_engine_availability(
        engine="sglang", model=model(engines=("vllm",)), platform=platform(gpus=())
    )
    assert "needs an NVIDIA GPU" in result.reason


def test_is_importable_finds_without_importing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "xinfd_fake_engine_pkg").mkdir()
    (tmp_path / "xinfd_fake_engine_pkg" / "__init__.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _common.is_importable("xinfd_fake_engine_pkg")
    assert "xinfd_fake_engine_pkg" not in sys.modules
    assert not _common.is_importable("xinfd_no_such_package_anywhere")


# ----------------------------------------------------------------------------------------------------------
# Packaging contract


def test_importing_the_plugins_imports_no_engine_library() -> None:
    code = (
        "import sys, xinfd_engines.vllm, xinfd_engines.sglang\n"
        "heavy = {'vllm', 'sglang', 'torch'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    env_path = f"{ROOT}:{ROOT / 'engines'}"
    subprocess.run(
        [sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": env_path}, timeout=60
    )


def test_pyproject_registers_the_engines_as_entry_points() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entry_points = pyproject["project"]["entry-points"]["xinfd"]
    assert entry_points["vllm"] == "xinfd_engines.vllm"
    assert entry_points["sglang"] == "xinfd_engines.sglang"
