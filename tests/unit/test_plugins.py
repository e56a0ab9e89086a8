"""Plugin discovery: entry points, explicit plugins, a broken plugin skipped, autoload off, duplicate engines."""

from __future__ import annotations

import inspect
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from xinfd import hookspecs
from xinfd.errors import InvalidRequestError, PluginError, UnknownEngineError
from xinfd.hookspecs import RegisterEngine, WorkerEngine, hookimpl
from xinfd.plugins import contract_violations, make_plugin_manager
from xinfd.types import (
    Ability,
    Availability,
    EmbeddingModel,
    LaunchSpec,
    ModelSpec,
    Platform,
    RegisterModel,
    ReplicaContext,
    TextModel,
)

PLATFORM = Platform(system="Linux", machine="x86_64", python_version="3.11.7")


class FakeEngine:
    """An engine object implementing the protocol directly (no base class), as a third party may write one."""

    abilities: tuple[Ability, ...] = ("chat",)
    description = ""
    probe_module: str | None = None
    loads_weights_folder = False
    launch_options: frozenset[str] | None = frozenset({"known"})

    def __init__(self, name: str) -> None:
        self.name = name

    def dependencies(self) -> list[str]:
        return [f"{self.name}-pkg>=1"]

    def build_env(self) -> dict[str, dict[str, str]]:
        return {}

    def availability(self, model: ModelSpec, platform: Platform) -> Availability:
        return Availability(available=True, reason="ok")

    def launch(self, model: ModelSpec, replica: ReplicaContext) -> LaunchSpec:
        if replica.options.get("known") == "bad":
            raise ValueError("launch option 'known' must not be 'bad'")
        return LaunchSpec(argv=("true",))

    def load(self, model: ModelSpec, replica: ReplicaContext) -> TextModel | EmbeddingModel:
        raise RuntimeError("not loaded in these tests")


class FakePlugin:
    """An explicit plugin object, as a test or an embedding application would register."""

    def __init__(self, engine: object) -> None:
        self.engine = engine
        self.name = str(getattr(engine, "name", "x"))
        self.__name__ = f"{self.name}-plugin-{id(self)}"  # pluggy's plugin name: unique per instance

    @hookimpl
    def xinfd_register_engines(self, register: RegisterEngine) -> None:
        register(self.engine)  # type: ignore[arg-type]  # some tests register objects that are not engines

    @hookimpl
    def xinfd_register_models(self, register: RegisterModel) -> None:
        register(ModelSpec(name=f"{self.name}-model", abilities=("chat",), engines=(self.name,)))


def plugin(name: str = "fake") -> FakePlugin:
    return FakePlugin(FakeEngine(name))


def replica(engine: str, **options: str) -> ReplicaContext:
    return ReplicaContext(
        model_uid="u", model_name=f"{engine}-model", engine=engine, replica_index=0, socket_path="/tmp/x.sock",
        python=sys.executable, options=options,
    )


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
    from xinfd.hookspecs import WorkerEngine, hookimpl
    from xinfd.types import Availability

    class Good(WorkerEngine):
        name = "goodengine"
        abilities = ("chat",)

        def availability(self, model, platform):
            return Availability(available=True)

        def load(self, model, replica):
            raise RuntimeError("unused")

    @hookimpl
    def xinfd_register_engines(register):
        register(Good())
    """
)


def test_explicit_plugin_registers_engine_and_model() -> None:
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[plugin()], env={})
    assert isinstance(plugins.engine("fake"), FakeEngine)
    assert "fake-model" in plugins.models
    assert plugins.dependencies("fake") == ["fake-pkg>=1"]
    model = plugins.models["fake-model"]
    assert plugins.availability("fake", model, PLATFORM).available
    assert plugins.launch_spec("fake", model, replica("fake")).argv == ("true",)


def test_unknown_engine_names_the_known_ones() -> None:
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[plugin()], env={})
    with pytest.raises(UnknownEngineError, match=r"unknown engine 'nope' \(registered: fake\)"):
        plugins.dependencies("nope")


def test_unknown_launch_options_are_refused_before_launch_by_every_engine() -> None:
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[plugin()], env={})
    model = plugins.models["fake-model"]
    with pytest.raises(InvalidRequestError, match=r"unknown launch option\(s\) for fake: typo \(known: known\)"):
        plugins.launch_spec("fake", model, replica("fake", typo="1"))
    # A ValueError from launch is the engine naming a bad value: a 400 on "options".
    with pytest.raises(InvalidRequestError, match="'known' must not be 'bad'") as bad:
        plugins.launch_spec("fake", model, replica("fake", known="bad"))
    assert bad.value.param == "options"


def test_engines_with_launch_options_none_check_names_themselves() -> None:
    engine = FakeEngine("free")
    engine.launch_options = None
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[FakePlugin(engine)], env={})
    assert plugins.launch_spec("free", plugins.models["free-model"], replica("free", anything="1")).argv == ("true",)


def test_a_raising_availability_makes_the_engine_unavailable() -> None:
    engine = FakeEngine("flaky")

    def boom(model: ModelSpec, platform: Platform) -> Availability:
        raise RuntimeError("nvml exploded")

    engine.availability = boom  # type: ignore[method-assign]
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[FakePlugin(engine)], env={})
    result = plugins.availability("flaky", plugins.models["flaky-model"], PLATFORM)
    assert not result.available and "nvml exploded" in result.reason


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
    first, second = plugin("dup"), plugin("dup")
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[first, second], env={})
    assert plugins.engines["dup"] is first.engine
    assert len(plugins.failures) == 1
    assert "engine 'dup' is already registered by dup-plugin-" in plugins.failures[0].error
    assert not plugins.pm.is_registered(second)


def test_misspelled_hookimpl_is_rejected_at_start() -> None:
    class Typo:
        @hookimpl
        def xinfd_register_engine(self, register):  # type: ignore[no-untyped-def]  # missing "s"
            pass

    plugins = make_plugin_manager(load_entrypoints=False, plugins=[Typo()], env={})
    assert plugins.failures and "xinfd_register_engine" in plugins.failures[0].error


@pytest.mark.parametrize("hook", hookspecs.REMOVED_HOOKS)
def test_a_plugin_with_a_removed_hook_is_refused_naming_the_new_contract(
    hook: str, caplog: pytest.LogCaptureFixture
) -> None:
    def old_style(*args: object, **kwargs: object) -> None:
        return None

    legacy = plugin("legacy")
    setattr(legacy, hook, hookimpl(old_style))
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[legacy, plugin("other")], env={})
    assert "legacy" not in plugins.engines and "other" in plugins.engines
    (failure,) = plugins.failures
    assert failure.error == (
        f"hook {hook} was removed: register an engine object with xinfd_register_engines (see xinfd.hookspecs)"
    )
    assert f"hook {hook} was removed" in caplog.text
    assert not plugins.pm.is_registered(legacy)


class _NoLoad:
    name = "half"
    abilities = ("chat",)
    description = ""
    probe_module = None
    loads_weights_folder = False

    def dependencies(self) -> list[str]:
        return []


def test_an_object_missing_part_of_the_protocol_is_skipped_naming_what_is_missing() -> None:
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[FakePlugin(_NoLoad())], env={})
    assert "half" not in plugins.engines
    (failure,) = plugins.failures
    assert "engine 'half' does not implement xinfd.hookspecs.Engine" in failure.error
    for missing in ("attribute 'launch_options'", "method build_env()", "method availability()",
                    "method launch()", "method load()"):
        assert missing in failure.error


def test_wrongly_typed_attributes_are_contract_violations() -> None:
    engine = FakeEngine("typed")
    engine.abilities = ("chat", "dance")  # type: ignore[assignment]
    engine.launch_options = {"a"}  # type: ignore[assignment]  # a set, not a frozenset
    problems = contract_violations(engine)
    assert any(p.startswith("abilities must be a tuple of chat, embed, generate") for p in problems)
    assert any(p.startswith("launch_options must be a frozenset") for p in problems)
    assert contract_violations(FakeEngine("fine")) == []


def test_wrong_return_type_is_a_plugin_error() -> None:
    engine = FakeEngine("bad")
    engine.launch = lambda model, replica: {"argv": ["true"]}  # type: ignore[method-assign,assignment,return-value]
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[FakePlugin(engine)], env={})
    with pytest.raises(PluginError, match=r"launch\(\) must return a LaunchSpec"):
        plugins.launch_spec("bad", plugins.models["bad-model"], replica("bad"))


def test_load_must_return_a_model_object() -> None:
    class Loads(WorkerEngine):
        name = "loads"
        abilities: tuple[Ability, ...] = ("chat",)

        def availability(self, model: ModelSpec, platform: Platform) -> Availability:
            return Availability(available=True)

        def load(self, model: ModelSpec, replica: ReplicaContext) -> TextModel | EmbeddingModel:
            return "not a model"  # type: ignore[return-value]

    plugins = make_plugin_manager(load_entrypoints=False, plugins=[FakePlugin(Loads())], env={})
    implements = "which implements none of TextModel, EmbeddingModel, RerankModel and ImageModel"
    with pytest.raises(PluginError, match=f"load\\(\\) returned str, {implements}"):
        plugins.load("loads", plugins.models["loads-model"], replica("loads"))


def test_build_env_is_checked_and_the_default_is_nothing_to_build() -> None:
    builds, bad = FakeEngine("builds"), FakeEngine("bad")
    builds.build_env = lambda: {"pkg": {"CMAKE_ARGS": "-DX=OFF"}}  # type: ignore[method-assign]
    bad.build_env = lambda: {"pkg": {"CMAKE_ARGS": 1}}  # type: ignore[method-assign,dict-item]
    engines = [FakePlugin(builds), FakePlugin(bad), plugin("plain")]
    plugins = make_plugin_manager(load_entrypoints=False, plugins=engines, env={})
    assert plugins.build_env("builds") == {"pkg": {"CMAKE_ARGS": "-DX=OFF"}}
    assert plugins.build_env("plain") == {}
    with pytest.raises(PluginError, match=r"build_env\(\) must return"):
        plugins.build_env("bad")


def test_llama_cpp_declares_its_portable_build() -> None:
    plugins = make_plugin_manager(env={})
    assert plugins.build_env("llama.cpp") == {"llama-cpp-python": {"CMAKE_ARGS": "-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"}}
    assert plugins.build_env("transformers") == {}


def test_the_contract_is_documented_hooks_and_engine_methods() -> None:
    """Every hook and every ``Engine`` method says what each argument is (``:param:``) and what it returns."""
    assert set(hookspecs.hook_names()) == {"xinfd_register_engines", "xinfd_register_models"}
    functions = hookspecs.contract_functions()
    assert {f.__name__ for f in functions} >= {"dependencies", "build_env", "availability", "launch", "load"}
    for function in functions:
        doc = function.__doc__ or ""
        name = function.__qualname__
        assert ":return:" in doc, f"{name} must document its return value"
        assert len(doc.strip().splitlines()) >= 3, f"{name} needs a real docstring"
        for arg in inspect.signature(function).parameters:
            if arg != "self":
                assert f":param {arg}:" in doc, f"{name} must document its argument {arg!r} with :param:"
    assert "Engine" in (hookspecs.__doc__ or "")


def test_builtin_engines_declare_folder_loading_on_the_engine() -> None:
    """What the downloader asks (``loads_weights_folder``) is each engine's own answer, not a table."""
    plugins = make_plugin_manager(env={})
    folder = {name for name, engine in plugins.engines.items() if engine.loads_weights_folder}
    assert folder == {
        "transformers", "sentence_transformers", "sentence_transformers_rerank", "vllm", "sglang", "mlx", "diffusers"
    }


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
