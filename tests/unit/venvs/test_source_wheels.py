"""Packages an engine wants built from source (``Engine.build_env``), built once into the wheel cache
(llama-cpp-python with ``CMAKE_ARGS=-DGGML_NATIVE=OFF``).

The package here is a real sdist with an in-tree PEP 517 backend (no build requirements, so pip's isolated
build needs no network): it records the ``XINFD_TEST_FLAG`` it was built with in the module it ships, appends
one line per build to a log, and fails when the flag says ``fail``. The index also offers a prebuilt wheel of
the same version built "natively": the venv must never take it.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.unit.stub_engines import StubEngine, StubPlugin
from tests.unit.venvs.wheels import make_index, make_wheel, wheel_from_installed
from xinfd.events import LaunchEvent
from xinfd.plugins import Plugins, make_plugin_manager
from xinfd.types import ModelSpec
from xinfd.venvs.provider import VenvProvider
from xinfd.venvs.spec import VenvError
from xinfd.venvs.wheels import BUILD_INFO, SourceBuild, WheelCache

BACKEND = '''
import base64, hashlib, os, zipfile

NAME, VERSION = "needs_flag", "1.0"

def _record(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    flag = os.environ.get("XINFD_TEST_FLAG", "")
    with open(os.environ["XINFD_TEST_BUILD_LOG"], "a") as f:
        f.write(flag + "\\n")
    if flag == "fail":
        raise RuntimeError("the compiler refused this flag")
    info = f"{NAME}-{VERSION}.dist-info"
    files = {
        f"{NAME}/__init__.py": f"FLAG = {flag!r}\\n".encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\\nName: needs-flag\\nVersion: {VERSION}\\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }
    lines = [_record(p, d) for p, d in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\\n".join(lines) + "\\n").encode()
    name = f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return name

def build_sdist(sdist_directory, config_settings=None):
    raise NotImplementedError
'''
PYPROJECT = '''[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]

[project]
name = "needs-flag"
version = "1.0"
'''


def make_sdist(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "needs_flag-1.0.tar.gz"
    files = {"pyproject.toml": PYPROJECT, "backend.py": BACKEND,
             "PKG-INFO": "Metadata-Version: 2.1\nName: needs-flag\nVersion: 1.0\n"}
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            member = tarfile.TarInfo(f"needs_flag-1.0/{name}")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return path


def source_engine(flag: str) -> StubPlugin:
    """An engine whose dependency must be built from source with a flag (as llama.cpp's is)."""
    engine = StubEngine(name="srcbuild", requirements=["needs-flag==1.0"],
                        build={"needs-flag": {"XINFD_TEST_FLAG": flag}})
    return StubPlugin([engine])


@pytest.fixture(scope="module")
def index_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("source-index")
    native = make_wheel(root / "prebuilt", "needs-flag", "1.0", body="FLAG = 'native'\n")
    # pip for the builder venv comes from the model's index, as it would from a mirror.
    pip_wheel = wheel_from_installed(root / "prebuilt", "pip")
    return make_index(root, [make_sdist(root / "sdist"), native, pip_wheel])


@pytest.fixture
def build_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "builds.log"
    path.write_text("")
    monkeypatch.setenv("XINFD_TEST_BUILD_LOG", str(path))
    return path


def plugins(flag: str) -> Plugins:
    return make_plugin_manager(load_entrypoints=False, plugins=[source_engine(flag)], env={})


def model(index: str, name: str) -> ModelSpec:
    return ModelSpec(name=name, abilities=("chat",), engines=("srcbuild",),
                     virtualenv={"packages": ["#srcbuild_dependencies#"], "index_url": index,
                                 "inherit_pip_config": False})


def provider(home: Path, wheels: Path, flag: str = "portable") -> VenvProvider:
    return VenvProvider(home=home, plugins=plugins(flag), enabled=True, skip_installed=True, wheel_cache=wheels)


def flag_in(venv: Path) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import needs_flag; print(needs_flag.FLAG)"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


class Events:
    def __init__(self) -> None:
        self.messages: list[str] = []

    async def __call__(self, event: LaunchEvent) -> None:
        self.messages.append(event.message)


async def test_built_once_with_the_engine_flag_and_reused_by_other_venvs(
    tmp_path: Path, index_url: str, build_log: Path
) -> None:
    wheels = tmp_path / "wheels"
    events = Events()
    first = await provider(tmp_path / "home-a", wheels).create(model(index_url, "a"), "srcbuild", publish=events)
    assert flag_in(first) == "portable"  # built from source with the flag, not the prebuilt "native" wheel
    assert any("building needs-flag 1.0 from source (XINFD_TEST_FLAG='portable')" in m for m in events.messages)
    # Another model, another home (another daemon): the same wheel, no second build.
    second = await provider(tmp_path / "home-b", wheels).create(model(index_url, "b"), "srcbuild")
    assert flag_in(second) == "portable"
    assert build_log.read_text().split() == ["portable"]
    [record] = wheels.glob(f"*/{BUILD_INFO}")
    entry = json.loads(record.read_text())
    assert entry["name"] == "needs-flag" and entry["env"] == {"XINFD_TEST_FLAG": "portable"}
    assert not list(wheels.glob(".build-*"))


async def test_changed_build_settings_build_again_into_a_new_venv(
    tmp_path: Path, index_url: str, build_log: Path
) -> None:
    wheels = tmp_path / "wheels"
    one = await provider(tmp_path / "home", wheels, "portable").create(model(index_url, "a"), "srcbuild")
    two = await provider(tmp_path / "home", wheels, "other").create(model(index_url, "a"), "srcbuild")
    assert one != two  # the build settings are part of the venv's digest
    assert (flag_in(one), flag_in(two)) == ("portable", "other")
    assert build_log.read_text().split() == ["portable", "other"]


async def test_concurrent_launches_wait_for_one_build(tmp_path: Path, index_url: str, build_log: Path) -> None:
    wheels = tmp_path / "wheels"
    venvs = await asyncio.gather(*(
        provider(tmp_path / f"home-{i}", wheels).create(model(index_url, f"m{i}"), "srcbuild") for i in range(3)
    ))
    assert [flag_in(v) for v in venvs] == ["portable"] * 3
    assert build_log.read_text().split() == ["portable"]


async def test_failed_build_is_one_line_and_leaves_nothing(tmp_path: Path, index_url: str, build_log: Path) -> None:
    wheels = tmp_path / "wheels"
    with pytest.raises(VenvError, match=r"pip wheel failed \(exit 1\)") as info:
        await provider(tmp_path / "home", wheels, "fail").create(model(index_url, "a"), "srcbuild")
    assert "\n" not in str(info.value)
    assert not list(wheels.glob("needs-flag-*")) and not list(wheels.glob(".build-*"))
    log_text = "".join(p.read_text() for p in (tmp_path / "home" / "logs").glob("venv-*.log"))
    assert "the compiler refused this flag" in log_text  # the whole story is in the build log


def test_leftover_build_dirs_are_removed_at_start_unless_being_built(tmp_path: Path) -> None:
    cache = WheelCache(tmp_path)
    build = SourceBuild(name="needs-flag", version="1.0", python_version="3.11.7", env={"A": "1"})
    stale = tmp_path / f".build-{build.key}-999999"
    stale.mkdir()
    other = SourceBuild(name="needs-flag", version="2.0", python_version="3.11.7", env={"A": "1"})
    busy = tmp_path / f".build-{other.key}-{os.getpid()}"
    busy.mkdir()
    from xinfd.venvs.cache import FileLock

    lock = FileLock(tmp_path / f".{other.key}.lock")
    assert lock.try_acquire()
    try:
        assert cache.clean_leftovers() == [stale]
    finally:
        lock.release()
    assert busy.exists() and not stale.exists()


def test_build_key_names_everything_that_decides_the_wheel() -> None:
    base = SourceBuild(name="Llama_CPP.Python", version="0.3.36", python_version="3.11.7",
                       env={"CMAKE_ARGS": "-DGGML_NATIVE=OFF"})
    assert base.key.startswith("llama-cpp-python-0.3.36-py311-")
    changed = [
        SourceBuild(name="llama-cpp-python", version="0.3.37", python_version="3.11.7", env=base.env),
        SourceBuild(name="llama-cpp-python", version="0.3.36", python_version="3.12.1", env=base.env),
        SourceBuild(name="llama-cpp-python", version="0.3.36", python_version="3.11.7", env={"CMAKE_ARGS": ""}),
    ]
    assert len({base.key, *(c.key for c in changed)}) == 4
