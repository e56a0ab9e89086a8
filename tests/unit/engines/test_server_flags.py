"""vLLM and SGLang get only flags their documented CLI has, and ``--enable-thinking`` becomes a default
chat-template argument (``LaunchSpec.chat_template_kwargs``), never a flag: vLLM's parser rejects it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from xinfd_engines import sglang, vllm

from tests.unit.engines.documented_flags import SGLANG, VLLM
from xinfd.errors import InvalidRequestError
from xinfd.plugins import Plugins
from xinfd.types import ModelSpec, ReplicaContext

DOCUMENTED = {"vllm": VLLM, "sglang": SGLANG}
# Every well-known option with a value that emits its flag.
ALL_KNOWN: dict[str, Any] = {
    "max_model_len": 4096,
    "gpu_memory_utilization": 0.9,
    "dtype": "bfloat16",
    "quantization": "awq",
    "trust_remote_code": True,
    "enforce_eager": True,
    "enable_thinking": True,
}


def flags(argv: tuple[str, ...]) -> set[str]:
    return {item.split("=")[0] for item in argv if item.startswith("--")}


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
@pytest.mark.parametrize("abilities", [("chat", "generate"), ("embed",)])
def test_every_emitted_flag_is_in_the_documented_cli(
    plugins: Plugins,
    model: Callable[..., ModelSpec],
    replica: Callable[..., ReplicaContext],
    engine: str,
    abilities: tuple[str, ...],
) -> None:
    spec = plugins.launch_spec(
        engine, model(abilities=abilities), replica(engine, gpus=(0, 1), options=ALL_KNOWN, port=30000)
    )
    emitted = flags(spec.argv)
    assert emitted - DOCUMENTED[engine] == set(), f"{engine} emits undocumented flags"
    assert "--enable-thinking" not in emitted


@pytest.mark.parametrize(("engine", "module"), [("vllm", vllm), ("sglang", sglang)])
def test_the_flag_tables_name_documented_flags(engine: str, module: Any) -> None:
    assert {flag.name for flag in module.CLI.flags.values()} <= DOCUMENTED[engine]


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
@pytest.mark.parametrize(("value", "expected"), [(True, True), ("true", True), ("false", False), (False, False)])
def test_enable_thinking_becomes_a_default_chat_template_argument(
    plugins: Plugins,
    model: Callable[..., ModelSpec],
    replica: Callable[..., ReplicaContext],
    engine: str,
    value: object,
    expected: bool,
) -> None:
    spec = plugins.launch_spec(engine, model(), replica(engine, options={"enable_thinking": value}))
    assert dict(spec.chat_template_kwargs) == {"enable_thinking": expected}
    assert not any("thinking" in item for item in spec.argv)


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_without_the_option_there_is_no_default(
    plugins: Plugins, model: Callable[..., ModelSpec], replica: Callable[..., ReplicaContext], engine: str
) -> None:
    assert dict(plugins.launch_spec(engine, model(), replica(engine)).chat_template_kwargs) == {}


def test_a_non_boolean_enable_thinking_is_a_400(
    plugins: Plugins, model: Callable[..., ModelSpec], replica: Callable[..., ReplicaContext]
) -> None:
    with pytest.raises(InvalidRequestError, match="'enable_thinking' must be true or false"):
        plugins.launch_spec("vllm", model(), replica(options={"enable_thinking": "maybe"}))
