"""pip parity of model venvs: dead extra indexes skipped with a warning, a dead or silent primary index fails
fast naming its host; venv markers decide which engines are offered; placeholder fallbacks; reuse checks."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import venv_plugin
from tests.unit.venvs.wheels import closed_port, standard_index
from xinfd.events import LaunchEvent
from xinfd.plugins import make_plugin_manager
from xinfd.types import ModelSpec, Platform
from xinfd.venv_markers import venv_entry_reason
from xinfd.venvs import cache
from xinfd.venvs.provider import VenvProvider
from xinfd.venvs.reach import usable_indexes
from xinfd.venvs.spec import FALLBACK_DEPENDENCIES, IndexOptions, VenvError, expand_packages


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    server.close()


class Events:
    def __init__(self) -> None:
        self.messages: list[str] = []

    async def __call__(self, event: LaunchEvent) -> None:
        self.messages.append(event.message)


async def test_dead_extra_index_is_skipped_with_a_warning_naming_the_host(tmp_path: Path, silent_port: int) -> None:
    index = standard_index(tmp_path / "idx")
    dead = f"http://127.0.0.1:{closed_port()}/simple"
    silent = f"http://127.0.0.1:{silent_port}/simple"
    events = Events()
    started = time.monotonic()
    usable = await usable_indexes(IndexOptions(index_url=index, extra_index_urls=(dead, silent),
                                               find_links=(str(tmp_path / "nowhere"),)), events, timeout=1.0)
    assert time.monotonic() - started < 5
    assert usable.index_url == index and usable.extra_index_urls == () and usable.find_links == ()
    assert any(dead.split("/")[2] in m and m.startswith("warning") for m in events.messages)
    assert any(f"127.0.0.1:{silent_port}" in m and "no answer" in m for m in events.messages)


async def test_silent_primary_index_fails_fast_naming_the_host(silent_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(VenvError, match=f"127.0.0.1:{silent_port} is unreachable"):
        await usable_indexes(IndexOptions(index_url=f"http://127.0.0.1:{silent_port}/simple"), Events(),
                             timeout=1.0)
    assert time.monotonic() - started < 5


async def test_build_goes_on_without_a_dead_extra_index(tmp_path: Path) -> None:
    index = standard_index(tmp_path / "idx")
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[venv_plugin], env={})
    provider = VenvProvider(home=tmp_path / "home", plugins=plugins, enabled=True, skip_installed=True)
    spec = ModelSpec(name="m", abilities=("chat",), engines=("pkgver",), virtualenv={
        "packages": ["xinfdtestpkg==2.0"], "index_url": index, "inherit_pip_config": False,
        "extra_index_url": f"http://127.0.0.1:{closed_port()}/simple"})
    events = Events()
    venv = await provider.create(spec, "pkgver", publish=events)
    assert (venv / "bin" / "python").exists()
    assert any("skipping package location" in m for m in events.messages)


async def test_inherited_pip_config_resolves_across_all_indexes(tmp_path: Path) -> None:
    # pip takes the best version over all its indexes; uv's default stops at the first index that has the name.
    first = standard_index(tmp_path / "first")  # xinfdtestpkg 1.0 and 2.0
    from tests.unit.venvs.wheels import make_index, make_wheel

    newer = make_index(tmp_path / "second" / "index", [make_wheel(tmp_path / "second" / "w", "xinfdtestpkg", "3.0")])

    class Pip:
        async def options(self) -> IndexOptions:
            # uv asks extra indexes first: the extra has xinfdtestpkg, so first-index never sees 3.0.
            return IndexOptions(index_url=newer, extra_index_urls=(first,))

    plugins = make_plugin_manager(load_entrypoints=False, plugins=[venv_plugin], env={})
    provider = VenvProvider(home=tmp_path / "home", plugins=plugins, enabled=True, skip_installed=True,
                            pip_config=Pip())  # type: ignore[arg-type]
    spec = ModelSpec(name="m", abilities=("chat",), engines=("pkgver",),
                     virtualenv={"packages": ["xinfdtestpkg>=2.0"]})
    venv = await provider.create(spec, "pkgver")
    assert "xinfdtestpkg==3.0" in cache.read_metadata(venv)["resolved"]  # type: ignore[index]
    pinned = ModelSpec(name="p", abilities=("chat",), engines=("pkgver",),
                       virtualenv={"packages": ["xinfdtestpkg>=2.0"], "index_strategy": "first-index"})
    venv = await provider.create(pinned, "pkgver")
    assert "xinfdtestpkg==2.0" in cache.read_metadata(venv)["resolved"]  # type: ignore[index]


def test_markers_decide_which_engines_are_offered() -> None:
    block = {"packages": ['transformers==4.46.3 ; #engine# == "transformers"', "#vllm_dependencies#"]}
    assert venv_entry_reason(block, "transformers") is None
    assert venv_entry_reason(block, "vllm") is None
    reason = venv_entry_reason(block, "llama.cpp")
    assert reason is not None and "llama.cpp" in reason and "#llama_cpp_dependencies#" in reason
    assert venv_entry_reason({"packages": ["numpy<2"]}, "llama.cpp") is None  # nothing engine-specific
    assert venv_entry_reason({"packages": ['#system_numpy# ; #model_engine# == "mlx"']}, "mlx") is None
    assert venv_entry_reason(None, "vllm") is None


def test_plugins_availability_applies_markers_only_with_venvs_on() -> None:
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[venv_plugin], env={})
    spec = ModelSpec(name="m", abilities=("chat",), engines=("pkgver",),
                     virtualenv={"packages": ['x==1 ; #engine# == "other"']})
    on = Platform(system="Linux", machine="x86_64", python_version="3.11.7", venv_enabled=True)
    off = Platform(system="Linux", machine="x86_64", python_version="3.11.7", venv_enabled=False)
    assert not plugins.availability("pkgver", spec, on).available
    assert "no entry for engine 'pkgver'" in plugins.availability("pkgver", spec, on).reason
    assert plugins.availability("pkgver", spec, off).available


def test_diffusers_placeholder_expands_without_a_diffusers_engine() -> None:
    out = expand_packages(["#diffusers_dependencies#"], engine="x", engines=["x"], dependencies=lambda e: [],
                          system_version=lambda n: None, environment={})
    assert out == FALLBACK_DEPENDENCIES["diffusers"]
    # An installed engine of that name wins over the fallback.
    out = expand_packages(["#diffusers_dependencies#"], engine="x", engines=["diffusers"],
                          dependencies=lambda e: ["diffusers==0.1"], system_version=lambda n: None, environment={})
    assert out == ("diffusers==0.1",)


def test_builtin_engines_answer_the_spec_placeholders() -> None:
    plugins = make_plugin_manager()
    for name in ("vllm", "sglang", "llama_cpp", "mlx", "transformers", "sentence_transformers"):
        out = expand_packages([f"#{name}_dependencies#"], engine="x", engines=sorted(plugins.engines),
                              dependencies=plugins.dependencies, system_version=lambda n: None,
                              environment={"sys_platform": "linux", "platform_release": "", "python_version": "3.11",
                                           "python_full_version": "3.11.7"})
        assert out, name


def test_transformers_placeholder_admits_the_old_releases_the_engine_serves() -> None:
    """The engine serves transformers < 5 through its generate() path, so ``#transformers_dependencies#`` beside a
    pin of GOT-OCR2's 4.37.2 (or the spec's ``-vp transformers==4.46.3``) must not be a resolver conflict."""
    from packaging.requirements import Requirement

    plugins = make_plugin_manager()
    out = expand_packages(["#transformers_dependencies#"], engine="transformers", engines=sorted(plugins.engines),
                          dependencies=plugins.dependencies, system_version=lambda n: None,
                          environment={"sys_platform": "linux"})
    (entry,) = [Requirement(e) for e in out if Requirement(e).name == "transformers"]
    for version in ("4.37.2", "4.46.3", "5.0.0"):
        assert entry.specifier.contains(version), (entry, version)


def test_reuse_sees_a_same_size_edit_and_pyvenv_cfg(tmp_path: Path) -> None:
    venv = tmp_path / "v"
    sp = venv / "lib" / "python3.11" / "site-packages"
    sp.mkdir(parents=True)
    (venv / "bin").mkdir()
    (venv / "bin" / "python").write_text("")
    os.chmod(venv / "bin" / "python", 0o755)
    (venv / "pyvenv.cfg").write_text("home = /usr\n")
    (sp / "mod.py").write_text("x = 1\n")
    cache.write_json_atomic(venv / cache.METADATA, {"format": cache.METADATA_FORMAT, "digest": "d"})
    cache.write_json_atomic(venv / cache.MANIFEST, cache.manifest(venv))
    assert cache.verify(venv, "d") is None
    (venv / "pyvenv.cfg").write_text("home = /opt\n")
    assert "pyvenv.cfg" in (cache.verify(venv, "d") or "")
    (venv / "pyvenv.cfg").write_text("home = /usr\n")
    time.sleep(0.01)
    (sp / "mod.py").write_text("x = 2\n")
    assert "modified" in (cache.verify(venv, "d") or "")


def test_record_hashes_find_changed_content(tmp_path: Path) -> None:
    import base64
    import hashlib

    venv = tmp_path / "v"
    sp = venv / "lib" / "python3.11" / "site-packages"
    (sp / "p-1.dist-info").mkdir(parents=True)
    (sp / "p.py").write_text("x = 1\n")
    digest = base64.urlsafe_b64encode(hashlib.sha256(b"x = 1\n").digest()).rstrip(b"=").decode()
    (sp / "p-1.dist-info" / "RECORD").write_text(f"p.py,sha256={digest},6\np-1.dist-info/RECORD,,\n")
    assert cache.verify_records(venv) == []
    (sp / "p.py").write_text("x = 2\n")
    assert cache.verify_records(venv) == ["p-1: p.py (content differs from RECORD)"]


