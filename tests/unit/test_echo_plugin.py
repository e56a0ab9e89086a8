"""The example plugin ``xinfd-echo``: its hooks, its launch spec and its deterministic model."""

from __future__ import annotations

import ast
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import xinfd_echo.plugin as echo_plugin
from xinfd_echo.model import EchoModel, EchoOptions, tokenize

from xinfd.errors import InvalidRequestError
from xinfd.plugins import Plugins, make_plugin_manager
from xinfd.types import (
    ChatMessage,
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
def plugins() -> Plugins:
    return make_plugin_manager(load_entrypoints=False, plugins=[echo_plugin], env={})


def test_registration(plugins: Plugins) -> None:
    assert not plugins.failures
    engine = plugins.engine("echo")
    assert engine is echo_plugin.ENGINE
    assert (engine.name, engine.abilities, engine.probe_module, engine.loads_weights_folder) == (
        "echo",
        ("chat", "generate"),
        "xinfd_echo",
        False,
    )
    assert engine.launch_options == frozenset(
        {"delay", "prefill_delay", "crash_after", "fail_load", "ignore_sigterm", "fork_grandchild"}
    )
    model = plugins.models["echo"]
    assert (model.name, model.engines, model.context_length) == ("echo", ("echo",), 4096)
    assert model.virtualenv == {"packages": []}


def test_the_hooks_take_no_engine_name() -> None:
    """The plugin module has only the two registry hooks; the engine object answers everything else."""
    hooks = {name for name in vars(echo_plugin) if name.startswith("xinfd_")}
    assert hooks == {"xinfd_register_engines", "xinfd_register_models"}


def test_dependencies_and_availability(plugins: Plugins) -> None:
    assert plugins.dependencies("echo") == []
    assert plugins.build_env("echo") == {}
    availability = plugins.availability("echo", SPEC, PLATFORM)
    assert availability.available
    assert "no accelerator" in availability.reason


def test_launch_spec_runs_the_worker_host(plugins: Plugins) -> None:
    spec = plugins.launch_spec("echo", SPEC, replica(delay="0.1"))
    assert spec.argv == ("/venvs/echo/bin/python", "-m", "xinfd.worker")
    assert spec.readiness.path == "/health"
    assert spec.api_prefix == "/v1"
    assert spec.stop_signal == signal.SIGTERM
    got_replica, got_model = decode_context(spec.env[CONTEXT_ENV])
    assert got_replica == replica(delay="0.1")
    assert got_model == SPEC


def test_launch_checks_option_names_and_values_in_the_daemon(plugins: Plugins) -> None:
    with pytest.raises(InvalidRequestError, match=r"unknown launch option\(s\) for echo: n_ctx"):
        plugins.launch_spec("echo", SPEC, replica(n_ctx="8"))
    with pytest.raises(InvalidRequestError, match="delay"):
        plugins.launch_spec("echo", SPEC, replica(delay="soon"))


def test_load_returns_a_text_model(plugins: Plugins) -> None:
    model = plugins.load("echo", SPEC, replica(delay="0.25", crash_after="3"))
    assert isinstance(model, EchoModel) and isinstance(model, TextModel)
    assert model.options == EchoOptions(delay=0.25, crash_after=3)
    assert model.context_window is None


def test_plugin_module_imports_only_stdlib_and_xinfd_at_top_level() -> None:
    tree = ast.parse((PLUGIN_DIR / "xinfd_echo" / "plugin.py").read_text())
    roots: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    modules = {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert roots - {"__future__", "xinfd", "xinfd_echo"} <= set(sys.stdlib_module_names)
    assert "xinfd_echo.model" not in modules  # the model module loads only inside the replica
    # What the plugin does import of its own package is standard library only, too.
    options = ast.parse((PLUGIN_DIR / "xinfd_echo" / "options.py").read_text())
    option_roots = {
        (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom) else node.names[0].name.split(".")[0]
        for node in options.body
        if isinstance(node, ast.Import | ast.ImportFrom)
    }
    assert option_roots - {"__future__"} <= set(sys.stdlib_module_names)


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
    request = GenerateRequest(request_id="r", prompt=prompt, max_tokens=max_tokens, stop=stop, kind="completion")
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
