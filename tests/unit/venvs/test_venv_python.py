"""Choosing a venv's interpreter and copying xinfd into venvs on another Python (several Python
versions per model): request validation, uv's search past pyenv shims, repacked distributions, the spec."""

from __future__ import annotations

import asyncio
import importlib.metadata
import platform
import sys
import zipfile
from pathlib import Path

import pytest

from tests.integration import venv_plugin
from xinfd.errors import InvalidRequestError
from xinfd.plugins import Plugins, make_plugin_manager
from xinfd.supervisor import LaunchRequest
from xinfd.types import ModelSpec
from xinfd.venvs import bundle
from xinfd.venvs.builder import Uv
from xinfd.venvs.provider import VenvProvider
from xinfd.venvs.python import (
    Interpreter,
    PythonNotFoundError,
    check_python_request,
    find_interpreter,
    search_path,
    version_matches,
)
from xinfd.venvs.spec import VenvError, VenvSpecError


@pytest.mark.parametrize("value", ["3.12", "3.12.1", " 3.13 ", "/usr/bin/python3.12"])
def test_python_request_accepts_versions_and_absolute_paths(value: str) -> None:
    assert check_python_request(value) == value.strip()


@pytest.mark.parametrize("value", ["python3.12", "3", "--python=3.12", "../bin/python", "/usr/../bin/py",
                                   "3.12; rm -rf /", "", 3.12, None, "cpython@3.12", "/usr/bin/py thon"])
def test_python_request_refuses_anything_else(value: object) -> None:
    with pytest.raises(VenvSpecError, match=r"python must be a version like 3\.12") as info:
        check_python_request(value)
    assert info.value.status == 400 and info.value.param == "python"


def test_launch_request_carries_python_and_round_trips() -> None:
    request = LaunchRequest.from_json({"model_name": "m", "python": "3.12"})
    assert request.python == "3.12"
    assert LaunchRequest.from_json(request.to_json()) == request
    assert "python" not in LaunchRequest.from_json({"model_name": "m"}).to_json()  # old state files unchanged
    with pytest.raises(InvalidRequestError, match="python must be"):
        LaunchRequest.from_json({"model_name": "m", "python": "python3"})


def test_version_filter_matches_by_components() -> None:
    assert version_matches("3.12.1", "3.12") and version_matches("3.12.1", "3.12.1")
    assert not version_matches("3.12.1", "3.1") and not version_matches("3.12.1", "3.12.10")


def test_search_path_replaces_pyenv_shims_by_installed_versions(tmp_path: Path) -> None:
    root = tmp_path / "pyenv"
    for version in ("3.9.18", "3.12.1", "3.10.13"):
        (root / "versions" / version / "bin").mkdir(parents=True)
    (root / "versions" / "myenv").symlink_to(root / "versions" / "3.12.1")  # pyenv-virtualenv: skipped
    (root / "shims").mkdir()
    path = f"/a:{root}/shims:/usr/bin:{root}/plugins/pyenv-virtualenv/shims"
    got = search_path({"PATH": path, "PYENV_ROOT": str(root)}).split(":")
    bins = [str(root / "versions" / v / "bin") for v in ("3.12.1", "3.10.13", "3.9.18")]
    assert got == ["/a", *bins, "/usr/bin"]
    assert search_path({"PATH": "/a:/b", "PYENV_ROOT": str(root)}) == "/a:/b"


def test_missing_version_is_one_clear_line() -> None:
    with pytest.raises(PythonNotFoundError) as info:
        asyncio.run(find_interpreter(Uv(), "3.99"))
    assert "Python 3.99 is not installed on this machine" in str(info.value)
    assert "\n" not in str(info.value) and info.value.status == 400


def test_the_daemons_own_interpreter_shares_its_environment() -> None:
    found = asyncio.run(find_interpreter(Uv(), sys.executable))
    assert found.version == platform.python_version() and found.shares_daemon_env


@pytest.fixture
def plugins() -> Plugins:
    return make_plugin_manager(load_entrypoints=True, plugins=[venv_plugin], env={})


def test_worker_distributions_are_xinfd_and_the_engines_plugin(plugins: Plugins) -> None:
    xinfd = f"xinfd=={importlib.metadata.version('xinfd')}"
    assert bundle.worker_distributions(plugins, "echo") == (
        xinfd, f"xinfd-echo=={importlib.metadata.version('xinfd-echo')}")
    # pkgver comes from a plain module (XINFD_PLUGINS + PYTHONPATH): nothing more to copy.
    assert bundle.worker_distributions(plugins, "pkgver") == (xinfd,)


def test_pure_distributions_are_repacked_with_their_entry_points(tmp_path: Path) -> None:
    lines = bundle.requirement_lines(["xinfd-echo==" + importlib.metadata.version("xinfd-echo")], tmp_path)
    assert len(lines) == 1 and lines[0].startswith("xinfd-echo @ file://")
    wheel = zipfile.ZipFile(lines[0].split(" @ file://")[1])
    names = wheel.namelist()
    assert any(n.endswith("entry_points.txt") for n in names)
    assert not any(n.endswith(("INSTALLER", "direct_url.json")) for n in names)
    wheel.testzip()
    record = next(n for n in names if n.endswith("RECORD"))
    assert all(row.split(",")[0] in names for row in wheel.read(record).decode().splitlines())


def test_compiled_distributions_come_from_the_index_by_version(tmp_path: Path) -> None:
    version = importlib.metadata.version("aiohttp")
    assert not bundle.is_pure(importlib.metadata.distribution("aiohttp"))
    assert bundle.requirement_lines([f"aiohttp=={version}"], tmp_path) == [f"aiohttp=={version}"]
    with pytest.raises(VenvError, match=r"changed from 0\.0\.1"):
        bundle.requirement_lines(["aiohttp==0.0.1"], tmp_path)


def test_spec_for_another_python_copies_xinfd_and_hashes_it(tmp_path: Path, plugins: Plugins) -> None:
    provider = VenvProvider(home=tmp_path, plugins=plugins, enabled=True, skip_installed=True)
    model = ModelSpec(name="m", abilities=("chat",), engines=("echo",),
                      virtualenv={"packages": ['x==1 ; python_version >= "3.12"']})
    default = provider.make_spec(model, "echo")
    same = provider.make_spec(model, "echo", (), Interpreter(path="/x/python3.11", version="3.11.7",
                                                                shares_daemon_env=True))
    other = provider.make_spec(model, "echo", (), Interpreter(path="/p/python3.12", version="3.12.1",
                                                                 shares_daemon_env=False))
    assert same == default and not default.own_copies and default.python == sys.executable
    assert other.python_version == "3.12.1" and other.python == "/p/python3.12"
    assert [b.split("==")[0] for b in other.bundled] == ["xinfd", "xinfd-echo"]
    assert other.requirements == ("x==1",)  # markers are evaluated for the venv's Python
    assert default.requirements == (() if sys.version_info < (3, 12) else ("x==1",))
    assert other.digest() != default.digest()
    with pytest.raises(PythonNotFoundError, match=r"Python 3\.10\.13 cannot run xinfd"):
        provider.make_spec(model, "echo", (), Interpreter(path="/p/python3.10", version="3.10.13",
                                                          shares_daemon_env=False))
