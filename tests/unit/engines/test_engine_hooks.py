"""Registration, dependencies and availability of the builtin vllm and sglang engine objects."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from xinfd_engines import _common, sglang, vllm

from xinfd.plugins import Plugins
from xinfd.types import GpuInfo, ModelSpec, Platform

ROOT = Path(__file__).resolve().parents[3]
ENGINES = ("vllm", "sglang")


def test_both_engines_register_with_their_abilities(plugins: Plugins) -> None:
    engines = plugins.engines
    assert set(engines) == {"vllm", "sglang"}
    assert engines["vllm"] is vllm.ENGINE and engines["sglang"] is sglang.ENGINE
    assert engines["vllm"].abilities == ("chat", "generate", "embed")
    assert engines["sglang"].abilities == ("chat", "generate")
    assert engines["vllm"].probe_module == "vllm"
    assert engines["sglang"].probe_module == "sglang"
    assert all(engine.description for engine in engines.values())
    # Both load a folder (or hub id), and both pass unknown option names through to their servers.
    assert all(engine.loads_weights_folder and engine.launch_options is None for engine in engines.values())


def test_no_engine_code_dispatches_on_an_engine_name() -> None:
    """Engine modules answer for themselves: no ``if engine != NAME`` anywhere, one registry hook each."""
    for path in sorted((ROOT / "engines" / "xinfd_engines").glob("*.py")):
        text = path.read_text()
        assert "engine != " not in text and "engine == " not in text, path.name
        hooks = {line.split("(")[0].removeprefix("def ") for line in text.splitlines()
                 if line.startswith("def xinfd_")}
        assert hooks <= {"xinfd_register_engines"}, (path.name, hooks)


def test_server_engines_are_not_loaded_by_the_worker(plugins: Plugins, model: Callable[..., ModelSpec]) -> None:
    from tests.unit.engines.conftest import make_replica

    with pytest.raises(RuntimeError, match="runs its own server"):
        plugins.engine("vllm").load(model(), make_replica())


@pytest.mark.parametrize("engine", ENGINES)
def test_dependencies_are_pep508_requirements_for_linux(plugins: Plugins, engine: str) -> None:
    deps = plugins.dependencies(engine)
    assert isinstance(deps, list) and deps
    requirements = [Requirement(dep) for dep in deps]
    assert [r.name for r in requirements] == [engine]
    for req in requirements:
        assert req.marker is not None
        # evaluate() layers the given keys over this interpreter's environment.
        assert req.marker.evaluate({"sys_platform": "linux"})
        assert not req.marker.evaluate({"sys_platform": "darwin"})


def test_vllm_floor_has_the_uds_flag(plugins: Plugins) -> None:
    (req,) = (Requirement(d) for d in plugins.dependencies("vllm"))
    # --uds (used by the launch spec) exists from 0.10.2 on; 0.10.1 must not satisfy the requirement.
    assert "0.10.2" in req.specifier
    assert "0.10.1" not in req.specifier


def test_sglang_dependency_pulls_the_server_runtime(plugins: Plugins) -> None:
    (req,) = (Requirement(d) for d in plugins.dependencies("sglang"))
    assert req.extras == {"all"}
    assert "0.4" in req.specifier


def test_dependencies_return_a_fresh_list(plugins: Plugins) -> None:
    first = plugins.dependencies("vllm")
    first.append("junk")
    assert "junk" not in plugins.dependencies("vllm")


# ----------------------------------------------------------------------------------------------------------
# Availability


@pytest.mark.parametrize("engine", ENGINES)
def test_available_with_a_declared_gpu(
    plugins: Plugins, engine: str, model: Callable[..., ModelSpec], platform: Callable[..., Platform]
) -> None:
    declared = (
        GpuInfo(index=0, name="declared-0", memory_mb=24576),
        GpuInfo(index=1, name="d1", memory_mb=1),
    )
    result = plugins.availability(engine, model(), platform(gpus=declared, nvml_available=False))
    assert result.available
    assert result.reason.startswith("ready")
    assert "2 NVIDIA GPU(s)" in result.reason


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("nvml", [True, False])
def test_unavailable_without_a_gpu(
    plugins: Plugins,
    engine: str,
    nvml: bool,
    model: Callable[..., ModelSpec],
    platform: Callable[..., Platform],
) -> None:
    result = plugins.availability(engine, model(), platform(gpus=(), nvml_available=nvml))
    state = "NVML: available, reports no GPU" if nvml else "NVML lists none"
    assert not result.available
    assert result.reason == f"{engine} needs an NVIDIA GPU; none found ({state})"


@pytest.mark.parametrize("engine", ENGINES)
def test_unavailable_without_a_driver_says_why(
    plugins: Plugins, engine: str, model: Callable[..., ModelSpec], platform: Callable[..., Platform]
) -> None:
    why = "no NVML: driver not found (NVML Shared Library Not Found)"
    result = plugins.availability(engine, model(), platform(gpus=(), nvml_error=why))
    assert result.reason == f"{engine} needs an NVIDIA GPU; none found ({why})"


@pytest.mark.parametrize("engine", ENGINES)
def test_unavailable_off_linux_even_before_the_gpu_check(
    plugins: Plugins, engine: str, model: Callable[..., ModelSpec], platform: Callable[..., Platform]
) -> None:
    result = plugins.availability(engine, model(), platform(system="Darwin", machine="arm64", gpus=())
    )
    assert not result.available
    assert result.reason == f"{engine} needs Linux with an NVIDIA GPU; this host runs Darwin"


@pytest.mark.parametrize("engine", ENGINES)
def test_unavailable_when_venvs_are_off_and_not_installed(
    plugins: Plugins,
    engine: str,
    model: Callable[..., ModelSpec],
    platform: Callable[..., Platform],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_common, "is_importable", lambda module: False)
    result = plugins.availability(engine, model(), platform(venv_enabled=False))
    assert not result.available
    assert result.reason == (
        f"{engine} is not installed in the daemon's environment and model virtual environments are disabled "
        "(XINFERENCE_ENABLE_VIRTUAL_ENV=0)"
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_available_when_venvs_are_off_but_installed(
    plugins: Plugins,
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
    result = plugins.availability(engine, model(), platform(venv_enabled=False))
    assert result.available
    assert f"{engine} is installed in the daemon's environment" in result.reason
    assert engine not in sys.modules


def test_venv_check_is_skipped_when_venvs_are_on(
    plugins: Plugins,
    model: Callable[..., ModelSpec],
    platform: Callable[..., Platform],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_common, "is_importable", lambda module: False)
    result = plugins.availability("vllm", model(), platform(venv_enabled=True))
    assert result.available
    assert "virtual environment" in result.reason


@pytest.mark.parametrize("engine", ENGINES)
def test_unavailable_for_a_model_without_the_engine(
    plugins: Plugins, engine: str, model: Callable[..., ModelSpec], platform: Callable[..., Platform]
) -> None:
    spec = model(name="bge-m3", engines=("sentence_transformers", "transformers"))
    result = plugins.availability(engine, spec, platform())
    assert not result.available
    assert result.reason == (
        f"model bge-m3 does not support engine {engine} (supported: sentence_transformers, transformers)"
    )


def test_model_with_no_engines_says_none(
    plugins: Plugins, model: Callable[..., ModelSpec], platform: Callable[..., Platform]
) -> None:
    result = plugins.availability("vllm", model(engines=()), platform())
    assert result.reason == "model qwen2.5-instruct does not support engine vllm (supported: none)"


def test_host_reasons_come_before_model_reasons(
    plugins: Plugins, model: Callable[..., ModelSpec], platform: Callable[..., Platform]
) -> None:
    # The model does not list sglang either, but the missing GPU is what the operator must fix first.
    result = plugins.availability("sglang", model(engines=("vllm",)), platform(gpus=()))
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
