"""The example plugin ``xinfd-echo``: its hooks, its launch spec and its deterministic model."""

from __future__ import annotations

import ast
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pluggy
import pytest
import xinfd_echo.plugin as echo_plugin
from xinfd_echo.model import EchoModel, EchoOptions, tokenize

import xinfd.hookspecs
from xinfd.types import (
    ChatMessage,
    EngineInfo,
    GenerateRequest,
    ModelSpec,
    Platform,
    ReplicaContext,
    TextModel,
)
from xinfd.worker.launch import CONTEXT_ENV, decode_context

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "plugins" / "xinfd-echo"
PLATFORM = Platform(system="Linux", machine="x86_64", python_version="3.11.9")
SPEC = ModelSpec(name="echo", abilities=("chat", "generate"), engines=("echo",), context_length=4096)


def replica(**options: Any) -> ReplicaContext:
    return ReplicaContext(
        model_uid="echo-1",
        model_name="echo",
        engine="echo",
        replica_index=2,
        socket_path="/run/x/echo-1-2.sock",
        python="/venvs/echo/bin/python",
        options=options,
    )


@pytest.fixture
def pm() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(xinfd.hookspecs.PROJECT_NAME)
    manager.add_hookspecs(xinfd.hookspecs)
    manager.register(echo_plugin, name="echo")
    manager.check_pending()
    return manager


def test_registration(pm: pluggy.PluginManager) -> None:
    engines: list[EngineInfo] = []
    models: list[ModelSpec] = []
    pm.hook.xinfd_register_engines(register=engines.append)
    pm.hook.xinfd_register_models(register=models.append)
    [engine] = engines
    assert (engine.name, engine.abilities, engine.probe_module) == (
        "echo",
        ("chat", "generate"),
        "xinfd_echo",
    )
    [model] = models
    assert (model.name, model.engines, model.context_length) == ("echo", ("echo",), 4096)
    assert model.virtualenv == {"packages": []}


def test_hooks_answer_none_for_other_engines(pm: pluggy.PluginManager) -> None:
    other = {"engine": "vllm"}
    assert pm.hook.xinfd_engine_dependencies(**other) is None
    assert pm.hook.xinfd_engine_availability(**other, model=SPEC, platform=PLATFORM) is None
    assert pm.hook.xinfd_engine_launch(**other, model=SPEC, replica=replica()) is None
    assert pm.hook.xinfd_engine_load(**other, model=SPEC, replica=replica()) is None


def test_dependencies_and_availability(pm: pluggy.PluginManager) -> None:
    assert pm.hook.xinfd_engine_dependencies(engine="echo") == []
    availability = pm.hook.xinfd_engine_availability(engine="echo", model=SPEC, platform=PLATFORM)
    assert availability.available
    assert "no accelerator" in availability.reason


def test_launch_spec_runs_the_worker_host(pm: pluggy.PluginManager) -> None:
    spec = pm.hook.xinfd_engine_launch(engine="echo", model=SPEC, replica=replica(delay="0.1"))
    assert spec.argv == ("/venvs/echo/bin/python", "-m", "xinfd.worker")
    assert spec.readiness.path == "/health"
    assert spec.api_prefix == "/v1"
    assert spec.stop_signal == signal.SIGTERM
    got_replica, got_model = decode_context(spec.env[CONTEXT_ENV])
    assert got_replica == replica(delay="0.1")
    assert got_model == SPEC


def test_load_returns_a_text_model(pm: pluggy.PluginManager) -> None:
    model = pm.hook.xinfd_engine_load(
        engine="echo", model=SPEC, replica=replica(delay="0.25", crash_after="3")
    )
    assert isinstance(model, EchoModel) and isinstance(model, TextModel)
    assert model.options == EchoOptions(delay=0.25, crash_after=3)


def test_plugin_module_imports_only_stdlib_and_xinfd_at_top_level() -> None:
    tree = ast.parse((PLUGIN_DIR / "xinfd_echo" / "plugin.py").read_text())
    roots: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert roots - {"__future__", "xinfd"} <= set(sys.stdlib_module_names)
    assert "xinfd_echo" not in roots  # the model module loads only inside the replica


def test_entry_point_is_declared() -> None:
    text = (PLUGIN_DIR / "pyproject.toml").read_text()
    assert '[project.entry-points.xinfd]\necho = "xinfd_echo.plugin"' in text


# -- the model -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", []),
        ("   ", ["   "]),
        ("hello", ["hello"]),
        ("Hello there, world!", ["Hello ", "there, ", "world!"]),
        ("  lead and trail \n", ["  lead ", "and ", "trail \n"]),
        ("tab\tsep\n\nlines", ["tab\t", "sep\n\n", "lines"]),
    ],
)
def test_tokenize(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens
    assert "".join(tokens) == text
    assert EchoModel().count_tokens(text) == len(tokens)


def test_render_chat_takes_the_last_user_message() -> None:
    messages = [
        ChatMessage(role="system", content="sys"),
        ChatMessage(role="user", content="first"),
        ChatMessage(role="assistant", content="reply"),
        ChatMessage(role="user", content="second"),
        ChatMessage(role="assistant", content="trailing"),
    ]
    assert EchoModel().render_chat(messages, {}) == "second"
    assert EchoModel().render_chat([ChatMessage(role="system", content="sys")], {}) == ""


async def collect(
    model: EchoModel, prompt: str, max_tokens: int = 100, stop: tuple[str, ...] = ()
) -> list[Any]:
    request = GenerateRequest(request_id="r", prompt=prompt, max_tokens=max_tokens, stop=stop)
    return [(d.text, d.finish_reason) async for d in model.generate(request)]


async def test_generate_one_delta_per_token() -> None:
    assert await collect(EchoModel(), "a b c") == [("a ", None), ("b ", None), ("c", "stop")]
    assert await collect(EchoModel(), "a b c", max_tokens=2) == [("a ", None), ("b ", "length")]
    assert await collect(EchoModel(), "a b", max_tokens=2) == [("a ", None), ("b", "stop")]
    assert await collect(EchoModel(), "") == [("", "stop")]


async def test_generate_stop_strings_are_held_back_and_cut() -> None:
    deltas = await collect(EchoModel(), "one two three four", stop=("o th",))
    assert "".join(text for text, _ in deltas) == "one tw"
    assert deltas[-1][1] == "stop"
    assert all("o th" not in text for text, _ in deltas)
    # a partial match that does not complete is released, not lost
    assert (
        "".join(t for t, _ in await collect(EchoModel(), "one two three", stop=("o tx",))) == "one two three"
    )
    assert await collect(EchoModel(), "stop right away", stop=("stop",)) == [("", "stop")]


async def test_generate_delays() -> None:
    model = EchoModel(EchoOptions(delay=0.02, prefill_delay=0.05))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await collect(model, "a b c")
    assert loop.time() - started >= 0.05 + 2 * 0.02


async def test_crash_after_exits_the_process_after_the_nth_request(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)
    model = EchoModel(EchoOptions(crash_after=2))
    await collect(model, "one")
    await asyncio.sleep(0.1)
    assert exits == []
    await collect(model, "two")
    await asyncio.sleep(0.1)
    assert exits == [17]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, EchoOptions()),
        ({"delay": "0.01", "prefill_delay": 2}, EchoOptions(delay=0.01, prefill_delay=2.0)),
        ({"crash_after": "3", "fail_load": "x"}, EchoOptions(crash_after=3, fail_load="x")),
        (
            {"ignore_sigterm": "true", "fork_grandchild": "1"},
            EchoOptions(ignore_sigterm=True, fork_grandchild=True),
        ),
        ({"ignore_sigterm": "off", "fork_grandchild": False}, EchoOptions()),
        ({"n_gpu_layers": "40", "delay": None}, EchoOptions()),  # other engines' options are not ours
    ],
)
def test_options_coercion(raw: dict[str, Any], expected: EchoOptions) -> None:
    assert EchoOptions.from_mapping(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        {"delay": "-1"},
        {"delay": "soon"},
        {"delay": "nan"},
        {"delay": True},
        {"crash_after": "0"},
        {"crash_after": 1.5},
        {"ignore_sigterm": "maybe"},
    ],
)
def test_invalid_options_name_the_option(raw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(raw))):
        EchoOptions.from_mapping(raw)


def test_load_fault_options() -> None:
    with pytest.raises(RuntimeError, match=r"^disk on fire$"):
        EchoModel.load(EchoOptions(fail_load="disk on fire"))
    previous = signal.getsignal(signal.SIGTERM)
    try:
        EchoModel.load(EchoOptions(ignore_sigterm=True))
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
    model = EchoModel.load(EchoOptions(fork_grandchild=True))
    assert model.grandchild is not None
    try:
        assert model.grandchild.poll() is None
        assert os.getpgid(model.grandchild.pid) == os.getpgid(0)  # the replica's group kill reaches it
    finally:
        model.grandchild.kill()
        model.grandchild.wait()
