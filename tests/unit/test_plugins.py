"""Plugin discovery: entry points, explicit plugins, a broken plugin skipped, autoload off, duplicate engines."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from xinfd import hookspecs
from xinfd.errors import PluginError, UnknownEngineError
from xinfd.hookspecs import hookimpl
from xinfd.plugins import make_plugin_manager
from xinfd.types import Availability, EngineInfo, LaunchSpec, ModelSpec, Platform, ReplicaContext

PLATFORM = Platform(system="Linux", machine="x86_64", python_version="3.11.7")


class FakeEngine:
    """An explicit plugin object, as a test or an embedding application would register."""

    def __init__(self, name: str = "fake") -> None:
        self.name = name

    @hookimpl
    def xinfd_register_engines(self, register):  # type: ignore[no-untyped-def]
        register(EngineInfo(name=self.name, abilities=("chat",)))

    @hookimpl
    def xinfd_register_models(self, register):  # type: ignore[no-untyped-def]
        register(ModelSpec(name=f"{self.name}-model", abilities=("chat",), engines=(self.name,)))

    @hookimpl
    def xinfd_engine_dependencies(self, engine):  # type: ignore[no-untyped-def]
        return [f"{self.name}-pkg>=1"] if engine == self.name else None

    @hookimpl
    def xinfd_engine_availability(self, engine, model, platform):  # type: ignore[no-untyped-def]
        return Availability(available=True, reason="ok") if engine == self.name else None

    @hookimpl
    def xinfd_engine_launch(self, engine, model, replica):  # type: ignore[no-untyped-def]
        return LaunchSpec(argv=("true",)) if engine == self.name else None


@pytest.fixture
def site_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder on sys.path where tests write plugin modules and dist-info entry points."""
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("xinfdtest_")]:
        del sys.modules[name]


def write_distribution(site: Path, dist: str, entry_points: dict[str, str]) -> None:
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[xinfd]\n{lines}\n")


GOOD_PLUGIN = textwrap.dedent(
    """
    from xinfd.hookspecs import hookimpl
    from xinfd.types import EngineInfo

    @hookimpl
    def xinfd_register_engines(register):
        register(EngineInfo(name="goodengine", abilities=("chat",)))
    """
)


def test_explicit_plugin_registers_engine_and_model() -> None:
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[FakeEngine()], env={})
    assert "fake" in plugins.engines
    assert "fake-model" in plugins.models
    assert plugins.dependencies("fake") == ["fake-pkg>=1"]
    model = plugins.models["fake-model"]
    assert plugins.availability("fake", model, PLATFORM).available
    replica = ReplicaContext(
        model_uid="u",
        model_name="fake-model",
        engine="fake",
        replica_index=0,
        socket_path="/tmp/x.sock",
        python=sys.executable,
    )
    assert plugins.launch_spec("fake", model, replica).argv == ("true",)


def test_unknown_engine_names_the_known_ones() -> None:
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[FakeEngine()], env={})
    with pytest.raises(UnknownEngineError, match=r"unknown engine 'nope' \(registered: fake\)"):
        plugins.dependencies("nope")


def test_entry_point_plugin_is_discovered(site_dir: Path) -> None:
    (site_dir / "xinfdtest_good.py").write_text(GOOD_PLUGIN)
    write_distribution(site_dir, "xinfdtest_good_dist", {"good": "xinfdtest_good"})
    plugins = make_plugin_manager(env={})
    assert "goodengine" in plugins.engines
    assert plugins.engine_owner["goodengine"].startswith("good ")


def test_broken_plugin_is_logged_and_skipped(site_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    (site_dir / "xinfdtest_good.py").write_text(GOOD_PLUGIN)
    (site_dir / "xinfdtest_broken.py").write_text("raise ImportError('missing dependency frobnicate')\n")
    write_distribution(site_dir, "xinfdtest_dist", {"good": "xinfdtest_good", "broken": "xinfdtest_broken"})
    plugins = make_plugin_manager(env={})
    assert "goodengine" in plugins.engines
    failure = next(f for f in plugins.failures if f.name == "broken")
    assert "frobnicate" in failure.error
    assert "plugin broken (xinfdtest_broken) failed to load" in caplog.text


def test_autoload_can_be_disabled(site_dir: Path) -> None:
    (site_dir / "xinfdtest_good.py").write_text(GOOD_PLUGIN)
    write_distribution(site_dir, "xinfdtest_good_dist", {"good": "xinfdtest_good"})
    plugins = make_plugin_manager(env={"XINFD_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert "goodengine" not in plugins.engines
    # XINFD_PLUGINS still loads named modules explicitly, which tests and embedders rely on.
    plugins = make_plugin_manager(
        env={"XINFD_DISABLE_PLUGIN_AUTOLOAD": "1", "XINFD_PLUGINS": "xinfdtest_good"}
    )
    assert "goodengine" in plugins.engines


def test_duplicate_engine_name_skips_second_plugin() -> None:
    first, second = FakeEngine("dup"), FakeEngine("dup")
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[first, second], env={})
    assert plugins.engines["dup"].name == "dup"
    assert len(plugins.failures) == 1
    assert "already registered" in plugins.failures[0].error
    assert not plugins.pm.is_registered(second)


def test_misspelled_hookimpl_is_rejected_at_start() -> None:
    class Typo:
        @hookimpl
        def xinfd_register_engine(self, register):  # type: ignore[no-untyped-def]  # missing "s"
            pass

    plugins = make_plugin_manager(load_entrypoints=False, plugins=[Typo()], env={})
    assert plugins.failures and "xinfd_register_engine" in plugins.failures[0].error


def test_wrong_return_type_is_a_plugin_error() -> None:
    class Bad(FakeEngine):
        @hookimpl
        def xinfd_engine_launch(self, engine, model, replica):  # type: ignore[no-untyped-def]
            return {"argv": ["true"]}

    plugins = make_plugin_manager(load_entrypoints=False, plugins=[Bad("bad")], env={})
    replica = ReplicaContext(
        model_uid="u",
        model_name="bad-model",
        engine="bad",
        replica_index=0,
        socket_path="/tmp/x.sock",
        python=sys.executable,
    )
    with pytest.raises(PluginError, match="must return a LaunchSpec"):
        plugins.launch_spec("bad", plugins.models["bad-model"], replica)


def test_build_env_is_checked_and_absent_means_nothing_to_build() -> None:
    class Builds(FakeEngine):
        @hookimpl
        def xinfd_engine_build_env(self, engine):  # type: ignore[no-untyped-def]
            return {"pkg": {"CMAKE_ARGS": "-DX=OFF"}} if engine == "builds" else None

    class Bad(FakeEngine):
        @hookimpl
        def xinfd_engine_build_env(self, engine):  # type: ignore[no-untyped-def]
            return {"pkg": {"CMAKE_ARGS": 1}} if engine == "bad" else None

    plugins = make_plugin_manager(load_entrypoints=False, plugins=[Builds("builds"), Bad("bad"), FakeEngine("plain")],
                                  env={})
    assert plugins.build_env("builds") == {"pkg": {"CMAKE_ARGS": "-DX=OFF"}}
    assert plugins.build_env("plain") == {}
    with pytest.raises(PluginError, match="xinfd_engine_build_env must return"):
        plugins.build_env("bad")


def test_llama_cpp_declares_its_portable_build() -> None:
    plugins = make_plugin_manager(env={})
    assert plugins.build_env("llama.cpp") == {"llama-cpp-python": {"CMAKE_ARGS": "-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"}}
    assert plugins.build_env("transformers") == {}


def test_every_hookspec_is_documented() -> None:
    names = hookspecs.hook_names()
    assert {
        "xinfd_register_engines",
        "xinfd_engine_dependencies",
        "xinfd_engine_availability",
        "xinfd_engine_launch",
        "xinfd_engine_load",
    } <= set(names)
    for name in names:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert ":return:" in doc, f"{name} must document its return value"
        assert len(doc.strip().splitlines()) >= 3, f"{name} needs a real docstring"


def test_installed_echo_plugin_is_discovered_through_its_entry_point() -> None:
    """The README's install puts plugins/xinfd-echo in the environment with pip; discovery must find it."""
    from importlib.metadata import entry_points

    echo = [ep for ep in entry_points(group="xinfd") if ep.name == "echo"]
    assert echo, "xinfd-echo is not installed (pip install -e plugins/xinfd-echo)"
    assert echo[0].dist is not None and echo[0].dist.name == "xinfd-echo"
    plugins = make_plugin_manager(env={})
    assert plugins.engine_owner["echo"] == "echo (xinfd_echo.plugin)"
    assert "echo" in plugins.models
    # Builtin engines come through the very same group.
    assert plugins.engine_owner["vllm"] == "vllm (xinfd_engines.vllm)"
