"""VenvProvider with the real uv against a test index (fault tests): one build for concurrent
launches, damaged venvs detected, unreachable index named, cancellation kills uv, in-use venvs kept."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import venv_plugin
from tests.unit.venvs.wheels import closed_port, serve_index, standard_index, uv_children
from xinfd.environments import EnvironmentRequest
from xinfd.events import LaunchEvent
from xinfd.plugins import Plugins, make_plugin_manager
from xinfd.supervisor import LaunchRequest
from xinfd.types import ModelSpec
from xinfd.venvs import cache, installed
from xinfd.venvs.provider import VenvProvider
from xinfd.venvs.spec import VenvError, VenvInUseError


@pytest.fixture(scope="module")
def index_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return standard_index(tmp_path_factory.mktemp("venv-index"))


@pytest.fixture
def plugins() -> Plugins:
    return make_plugin_manager(load_entrypoints=False, plugins=[venv_plugin], env={})


def model(index: str, *packages: str, name: str = "m") -> ModelSpec:
    return ModelSpec(name=name, abilities=("chat",), engines=("pkgver",),
                     virtualenv={"packages": list(packages), "index_url": index, "inherit_pip_config": False})


def provider(home: Path, plugins: Plugins, **kw: Any) -> VenvProvider:
    return VenvProvider(home=home, plugins=plugins, enabled=True, skip_installed=True, **kw)


class Events:
    def __init__(self) -> None:
        self.messages: list[str] = []

    async def __call__(self, event: LaunchEvent) -> None:
        self.messages.append(event.message)

    def count(self, text: str) -> int:
        return sum(text in m for m in self.messages)


def running(uid: str, spec: ModelSpec, **request: Any) -> EnvironmentRequest:
    options = LaunchRequest(model_name=spec.name, **request)
    return EnvironmentRequest(model_uid=uid, spec=spec, engine="pkgver", options=options)


async def test_concurrent_launches_of_one_cold_spec_build_once(
    tmp_path: Path, plugins: Plugins, index_url: str
) -> None:
    spec = model(index_url, "xinfdtestpkg==2.0")
    first, other = provider(tmp_path, plugins), provider(tmp_path, plugins)  # `other`: a second daemon
    events = Events()
    envs = await asyncio.gather(*(p.prepare(running(f"m{i}", spec), events)
                                  for i, p in enumerate([first, first, first, other])))
    assert events.count("building venv") == 1
    assert len({e.python for e in envs}) == 1
    assert sorted(first.in_use[envs[0].venv_path or ""]) == ["m0", "m1", "m2"]
    assert other.in_use[envs[0].venv_path or ""] == {"m3"}


async def test_damaged_venv_is_rebuilt_or_refused_while_in_use(
    tmp_path: Path, plugins: Plugins, index_url: str
) -> None:
    p = provider(tmp_path, plugins)
    spec = model(index_url, "xinfdtestpkg==2.0")
    venv = await p.create(spec, "pkgver")
    init = next(venv.glob("lib/python*/site-packages/xinfdtestpkg/__init__.py"))
    init.unlink()
    events = Events()
    env = await p.prepare(running("a", spec), events)
    assert events.count("venv is damaged") == 1 and events.count("building venv") == 1
    assert init.exists() and env.venv_path == str(venv)
    init.unlink()
    with pytest.raises(VenvError, match=r"damaged .* in use by a"):
        await p.prepare(running("b", spec), Events())


async def test_unreachable_index_fails_fast_naming_the_host(tmp_path: Path, plugins: Plugins) -> None:
    port = closed_port()
    p = provider(tmp_path, plugins)
    with pytest.raises(VenvError, match=f"127.0.0.1:{port} is unreachable"):
        await p.create(model(f"http://127.0.0.1:{port}/simple", "xinfdtestpkg==1.0"), "pkgver")
    group = tmp_path / "virtualenv" / "v4" / "m" / "pkgver"
    assert not [e for e in group.iterdir() if not e.name.endswith(".lock")]


async def test_unsatisfiable_spec_is_one_line_with_uv_s_reason(
    tmp_path: Path, plugins: Plugins, index_url: str
) -> None:
    p = provider(tmp_path, plugins)
    with pytest.raises(VenvError) as info:
        await p.create(model(index_url, "xinfdtestpkg==9.9"), "pkgver")
    assert "xinfdtestpkg" in str(info.value) and "\n" not in str(info.value)
    assert not list((tmp_path / "virtualenv" / "v4" / "m" / "pkgver").glob(".build-*"))


@pytest.fixture
def stalled(index_url: str) -> Iterator[str]:
    with serve_index(index_url) as (url, stall):
        stall.set()
        yield url


async def test_cancelling_a_build_kills_uv_and_removes_the_build_dir(
    tmp_path: Path, plugins: Plugins, stalled: str
) -> None:
    p = provider(tmp_path, plugins)
    task = asyncio.create_task(p.create(model(stalled, "xinfdtestpkg==1.0"), "pkgver"))
    for _ in range(400):
        await asyncio.sleep(0.05)
        uv = uv_children(os.getpid())
        if uv and list((tmp_path / "virtualenv").rglob(".build-*")):
            break
    assert uv, "uv never started"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not uv_children(os.getpid())
    assert not list((tmp_path / "virtualenv").rglob(".build-*"))


async def test_build_timeout_is_a_clear_error(tmp_path: Path, plugins: Plugins, stalled: str) -> None:
    p = provider(tmp_path, plugins, build_timeout=1.5)
    with pytest.raises(VenvError, match="timed out"):
        await p.create(model(stalled, "xinfdtestpkg==1.0"), "pkgver")
    assert not uv_children(os.getpid())


async def test_remove_and_gc_keep_in_use_venvs(tmp_path: Path, plugins: Plugins, index_url: str) -> None:
    p = provider(tmp_path, plugins)
    used = await p.prepare(running("busy", model(index_url, "xinfdtestpkg==1.0")), Events())
    idle = await p.create(model(index_url, "xinfdtestpkg==2.0", name="idle"), "pkgver")
    with pytest.raises(VenvInUseError, match="busy"):
        await p.remove("m")
    assert await p.gc() == [str(idle)]
    assert Path(used.venv_path or "").is_dir()
    p.release("busy")
    assert await p.remove("m") == [used.venv_path]


async def test_startup_removes_only_leftovers_nobody_is_building(
    tmp_path: Path, plugins: Plugins, index_url: str
) -> None:
    p = provider(tmp_path, plugins)
    venv = await p.create(model(index_url, "xinfdtestpkg==1.0"), "pkgver")
    group = venv.parent
    dead = group / f".build-{venv.name}-1-dead"
    live_name = "3.11.0-0000000000000000"
    live = group / f".build-{live_name}-2-live"
    dead.mkdir()
    live.mkdir()
    held = cache.FileLock(group / f".{live_name}.lock")
    assert held.try_acquire()
    try:
        removed = provider(tmp_path, plugins).startup_cleanup()
    finally:
        held.release()
    assert removed == [dead] and live.exists() and venv.exists()


def test_replicas_get_the_venv_interpreter_and_its_nvidia_libraries(tmp_path: Path, plugins: Plugins) -> None:
    venv = tmp_path / "v"
    lib = venv / "lib" / "python3.11" / "site-packages" / "nvidia" / "cudnn" / "lib"
    lib.mkdir(parents=True)
    env = provider(tmp_path, plugins).environment(venv)
    assert env.python == str(venv / "bin" / "python")
    assert env.env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == str(lib)
    assert env.env["VIRTUAL_ENV"] == str(venv)


async def test_venv_sees_xinfd_and_plugins_after_its_own_packages(
    tmp_path: Path, plugins: Plugins, index_url: str
) -> None:
    # The daemon runs in its own venv (README): the model venv must still import xinfd and the entry-point
    # plugins through a .pth, without PYTHONPATH, and its own site-packages must come first.
    venv = await provider(tmp_path, plugins).create(model(index_url, "xinfdtestpkg==1.0"), "pkgver")
    code = ("import sys, xinfd.worker, xinfd_echo, xinfdtestpkg; "
            "print(sys.path.index(next(p for p in sys.path if p.startswith(sys.prefix) and "
            "p.endswith('site-packages'))) < sys.path.index(next(p for p in sys.path if p.startswith("
            "sys.argv[1]) and p.endswith('site-packages'))))")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = await asyncio.create_subprocess_exec(str(venv / "bin" / "python"), "-c", code, sys.prefix, env=env,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and out.strip() == b"True"


async def test_verify_reports_a_file_whose_bytes_changed_by_its_record_hash(
    tmp_path: Path, plugins: Plugins, index_url: str
) -> None:
    p = provider(tmp_path, plugins)
    venv = await p.create(model(index_url, "xinfdtestpkg==2.0"), "pkgver")
    assert [row["damaged"] for row in p.entries(verify=True)] == [[]]
    init = next(venv.glob("lib/python*/site-packages/xinfdtestpkg/__init__.py"))
    st = init.stat()
    data = init.read_bytes()
    init.write_bytes(bytes([data[0] ^ 0x01]) + data[1:])  # same size; mtime put back below
    os.utime(init, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.verify(venv, venv.name.rsplit("-", 1)[1]) is None  # the per-launch check cannot see it
    [row] = p.entries(verify=True)
    assert row["damaged"] == ["xinfdtestpkg-2.0: xinfdtestpkg/__init__.py (content differs from RECORD)"]
    assert "damaged" not in p.entries()[0]  # only asked for: it reads every file


async def test_a_wrongly_predicted_skip_fails_the_build_naming_the_package(
    tmp_path: Path, plugins: Plugins, index_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The base scan reads directories; if it claims a distribution the venv's interpreter does not see, the
    # build's import probe must refuse to publish a venv that lacks it.
    real = installed.visible
    monkeypatch.setattr(installed, "visible", lambda paths: {**real(paths), "xinfdtestpkg": "2.0"})
    p = provider(tmp_path, plugins)
    with pytest.raises(VenvError, match=r"does not see .*xinfdtestpkg 2\.0 \(found none\)"):
        await p.create(model(index_url, "xinfdtestpkg==2.0"), "pkgver")
    assert p.entries() == []


def test_import_probe_checks_skipped_versions_on_the_interpreters_path(tmp_path: Path) -> None:
    """The probe reads dist-info names on the interpreter's own sys.path: an equal version under another
    spelling passes (1.0 == 1.0.0), a different or missing one is reported, and nothing is imported then."""
    import json
    import subprocess
    import sys

    from xinfd.venvs.builder import _PROBE

    (tmp_path / "pkg_a-1.0.dist-info").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path[1:]])}

    def probe(expected: dict[str, str], *modules: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", _PROBE, json.dumps(expected), *modules], env=env,
                              capture_output=True, text=True, timeout=60)

    ok = probe({"pkg-a": "1.0"}, "xinfd.worker")
    assert ok.returncode == 0 and json.loads(ok.stdout) == {}, ok.stderr
    assert json.loads(probe({"pkg-a": "1.0.0"}).stdout) == {}
    wrong = probe({"pkg-a": "2.0", "absent-pkg": "1"}, "module_that_does_not_exist")
    assert wrong.returncode == 0 and json.loads(wrong.stdout) == {"pkg-a": "1.0", "absent-pkg": None}
    broken = probe({}, "module_that_does_not_exist")
    assert broken.returncode != 0 and "module_that_does_not_exist" in broken.stderr
