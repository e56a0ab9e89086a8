"""Launch specs of the builtin vllm and sglang engines: argv, env, readiness, option mapping, errors."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

import pytest

from xinfd.plugins import Plugins
from xinfd.types import LaunchSpec, ModelSpec, ReplicaContext

PYTHON = "/var/lib/xinfd/virtualenv/v4/qwen2.5-instruct/vllm/3.11.9/bin/python"
SOCKET = "/run/xinfd/replicas/qwen-1-0.sock"

Replica = Callable[..., ReplicaContext]
Model = Callable[..., ModelSpec]


def launch(plugins: Plugins, engine: str, model: ModelSpec, replica: ReplicaContext) -> LaunchSpec:
    """The engine's own ``launch`` (a ValueError for a bad option; the facade turns it into a 400)."""
    spec = plugins.engine(engine).launch(model, replica)
    assert isinstance(spec, LaunchSpec)
    return spec


def tail(spec: LaunchSpec, head: int) -> list[str]:
    """The option part of argv, after the ``head`` items the engine always emits."""
    return list(spec.argv[head:])


VLLM_HEAD = 11  # python -m module --model M --served-model-name U --uds S --tensor-parallel-size N
SGLANG_HEAD = 13  # python -m module --model-path M --served-model-name U --host H --port P --tp-size N


# ----------------------------------------------------------------------------------------------------------
# vLLM


def test_vllm_one_gpu(plugins: Plugins, model: Model, replica: Replica) -> None:
    spec = launch(plugins, "vllm", model(), replica(gpus=(3,)))
    assert spec.argv == (
        PYTHON,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "Qwen/Qwen2.5-7B-Instruct",
        "--served-model-name",
        "qwen-1",
        "--uds",
        SOCKET,
        "--tensor-parallel-size",
        "1",
    )
    # The daemon adds CUDA_VISIBLE_DEVICES and the user's --env values; the plugin forces nothing.
    assert dict(spec.env) == {}
    assert spec.readiness.path == "/health"
    assert spec.readiness.timeout_s >= 1800
    assert spec.api_prefix == "/v1"
    assert spec.stop_signal == signal.SIGTERM
    # Served on the replica's Unix socket: no TCP port, even when the daemon reserved one.
    assert spec.listen == "unix"


def test_vllm_ignores_the_reserved_port(plugins: Plugins, model: Model, replica: Replica) -> None:
    spec = launch(plugins, "vllm", model(), replica(port=41234))
    assert spec.listen == "unix"
    assert "--port" not in spec.argv and "41234" not in spec.argv
    assert spec.argv == launch(plugins, "vllm", model(), replica()).argv


def test_vllm_two_gpus_is_tensor_parallel_two(
    plugins: Plugins, model: Model, replica: Replica
) -> None:
    spec = launch(plugins, "vllm", model(), replica(gpus=(0, 1)))
    argv = list(spec.argv)
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert dict(spec.env) == {}
    assert "CUDA_VISIBLE_DEVICES" not in spec.env


def test_vllm_without_gpus_uses_one_rank(plugins: Plugins, model: Model, replica: Replica) -> None:
    argv = list(launch(plugins, "vllm", model(), replica(gpus=())).argv)
    assert argv[argv.index("--tensor-parallel-size") + 1] == "1"


def test_vllm_maps_well_known_options(plugins: Plugins, model: Model, replica: Replica) -> None:
    options = {
        "max_model_len": 8192,
        "gpu_memory_utilization": 0.85,
        "dtype": "bfloat16",
        "quantization": "awq",
        "trust_remote_code": True,
        "enforce_eager": False,
    }
    spec = launch(plugins, "vllm", model(), replica(options=options))
    assert tail(spec, VLLM_HEAD) == [
        "--max-model-len",
        "8192",
        "--gpu-memory-utilization",
        "0.85",
        "--dtype",
        "bfloat16",
        "--quantization",
        "awq",
        "--trust-remote-code",
    ]


def test_boolean_options_accept_command_line_strings(
    plugins: Plugins, model: Model, replica: Replica
) -> None:
    spec = launch(
        plugins, "vllm", model(), replica(options={"trust_remote_code": "true", "enforce_eager": "True"})
    )
    assert tail(spec, VLLM_HEAD) == ["--trust-remote-code", "--enforce-eager"]
    spec = launch(
        plugins, "vllm", model(), replica(options={"trust_remote_code": "false", "max_model_len": "32k"})
    )
    assert tail(spec, VLLM_HEAD) == ["--max-model-len", "32k"]


def test_unknown_options_pass_through_as_flags(
    plugins: Plugins, model: Model, replica: Replica
) -> None:
    options: dict[str, Any] = {
        "max_num_seqs": 64,
        "enable_prefix_caching": True,
        "disable_log_stats": False,
        "seed": None,
        "tokenizer_mode": "mistral",
        "hf_overrides": {"rope_scaling": {"type": "yarn", "factor": 4.0}},
        "allowed_origins": ["http://a", "http://b"],
    }
    spec = launch(plugins, "vllm", model(), replica(options=options))
    assert tail(spec, VLLM_HEAD) == [
        "--max-num-seqs",
        "64",
        "--enable-prefix-caching",
        "--tokenizer-mode",
        "mistral",
        "--hf-overrides",
        json.dumps({"rope_scaling": {"factor": 4.0, "type": "yarn"}}, sort_keys=True),
        "--allowed-origins",
        "http://a",
        "http://b",
    ]


def test_values_that_look_like_flags_are_bound_to_their_flag(
    plugins: Plugins, model: Model, replica: Replica
) -> None:
    spec = launch(plugins, "vllm", model(), replica(options={"chat_template": "--uds /tmp/x", "seed": -1}))
    assert tail(spec, VLLM_HEAD) == ["--chat-template=--uds /tmp/x", "--seed=-1"]


@pytest.mark.parametrize(
    "name", ["Max_model_len", "max-model-len", "1st", "_x", "", "a b", "--uds", "gpu.util"]
)
@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_bad_option_names_are_rejected(
    plugins: Plugins, model: Model, replica: Replica, engine: str, name: str
) -> None:
    with pytest.raises(ValueError, match="launch option") as excinfo:
        launch(plugins, engine, model(), replica(engine, options={name: "1"}))
    assert repr(name) in str(excinfo.value)


@pytest.mark.parametrize(
    ("engine", "name"),
    [
        ("vllm", "uds"),
        ("vllm", "port"),
        ("vllm", "host"),
        ("vllm", "model"),
        ("vllm", "served_model_name"),
        ("vllm", "served_model"),  # argparse would expand the prefix to --served-model-name
        ("vllm", "tensor_parallel_size"),
        ("vllm", "pipeline_parallel_size"),
        ("sglang", "tp"),
        ("sglang", "tp_size"),
        ("sglang", "host"),
        ("sglang", "port"),
        ("sglang", "model"),
        ("sglang", "dp"),
    ],
)
def test_options_cannot_override_what_the_daemon_decides(
    plugins: Plugins, model: Model, replica: Replica, engine: str, name: str
) -> None:
    with pytest.raises(ValueError, match=f"launch option '{name}' would set --"):
        launch(plugins, engine, model(), replica(engine, options={name: "2"}))


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("max_model_len", -1, "positive integer"),
        ("max_model_len", "lots", "positive integer"),
        ("max_model_len", True, "takes a value"),
        ("gpu_memory_utilization", 1.5, r"in \(0, 1\]"),
        ("gpu_memory_utilization", "nan", r"in \(0, 1\]"),
        ("dtype", "", "non-empty string"),
        ("trust_remote_code", "maybe", "true or false"),
        ("max_num_seqs", object(), "unsupported value type"),
        ("max_num_seqs", float("inf"), "finite"),
        ("allowed_origins", [], "empty list"),
        ("allowed_origins", ["-x"], "read as a flag"),
        ("hf_overrides", {"a": object()}, "JSON"),
    ],
)
def test_bad_option_values_are_rejected(
    plugins: Plugins, model: Model, replica: Replica, name: str, value: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as excinfo:
        launch(plugins, "vllm", model(), replica(options={name: value}))
    assert repr(name) in str(excinfo.value)


def test_embedding_only_models_use_the_pooling_runner(
    plugins: Plugins, model: Model, replica: Replica
) -> None:
    embed = model(name="bge-m3", abilities=("embed",), extra={"model_id": "BAAI/bge-m3"})
    assert tail(launch(plugins, "vllm", embed, replica()), VLLM_HEAD) == ["--runner", "pooling"]
    # The user's choice wins, and is not emitted twice.
    spec = launch(plugins, "vllm", embed, replica(options={"runner": "generate"}))
    assert tail(spec, VLLM_HEAD) == ["--runner", "generate"]
    assert tail(launch(plugins, "vllm", model(), replica()), VLLM_HEAD) == []


# ----------------------------------------------------------------------------------------------------------
# Weights location (shared)


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_missing_weights_location_is_an_error(
    plugins: Plugins, model: Model, replica: Replica, engine: str
) -> None:
    with pytest.raises(ValueError, match=r"model qwen2\.5-instruct has no weights location"):
        launch(plugins, engine, model(extra={}), replica(engine))


def test_weights_location_precedence(plugins: Plugins, model: Model, replica: Replica) -> None:
    both = model(extra={"model_path": "/models/qwen", "model_id": "Qwen/Qwen2.5-7B-Instruct"})
    assert launch(plugins, "vllm", both, replica()).argv[4] == "/models/qwen"
    spec = launch(plugins, "vllm", both, replica(options={"model_path": "/scratch/qwen-local"}))
    assert spec.argv[4] == "/scratch/qwen-local"
    # model_path is consumed, never forwarded as a second flag.
    assert "--model-path" not in spec.argv and tail(spec, VLLM_HEAD) == []


def test_one_weights_location_rule_for_every_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Server engines and worker engines resolve the weights the same way (one function, one order)."""
    from xinfd_engines._common import weights_location

    from xinfd.types import ModelSpec

    def spec(**extra: object) -> ModelSpec:
        return ModelSpec(name="m", abilities=("chat",), engines=("vllm",), extra=dict(extra))

    monkeypatch.setenv("HOME", "/home/op")
    shipped = {"package": "pytest", "file": "w.gguf"}
    assert weights_location(spec(model_path="~/w", model_id="org/m"), {}) == "/home/op/w"
    assert weights_location(spec(package_file=shipped, model_id="org/m"), {}).endswith("pytest/w.gguf")
    assert weights_location(spec(package_file=shipped), {"model_path": "/x"}) == "/x"
    assert weights_location(spec(model_id="org/m"), {}) == "org/m"
    with pytest.raises(ValueError, match="package 'nope' is not installed"):
        weights_location(spec(package_file={"package": "nope", "file": "w"}), {})
    with pytest.raises(ValueError, match="extra 'model_id' must be a non-empty string"):
        weights_location(spec(model_id=""), {})


def test_weights_location_must_be_a_string(plugins: Plugins, model: Model, replica: Replica) -> None:
    with pytest.raises(ValueError, match="extra 'model_path' must be a non-empty string"):
        launch(plugins, "vllm", model(extra={"model_path": 42}), replica())
    with pytest.raises(ValueError, match="launch option 'model_path'"):
        launch(plugins, "vllm", model(), replica(options={"model_path": "  "}))


# ----------------------------------------------------------------------------------------------------------
# SGLang


def test_sglang_one_gpu(plugins: Plugins, model: Model, replica: Replica) -> None:
    spec = launch(plugins, "sglang", model(), replica("sglang", gpus=(1,), port=30001))
    assert spec.argv == (
        PYTHON,
        "-m",
        "sglang.launch_server",
        "--model-path",
        "Qwen/Qwen2.5-7B-Instruct",
        "--served-model-name",
        "qwen-1",
        "--host",
        "127.0.0.1",
        "--port",
        "30001",
        "--tp-size",
        "1",
    )
    assert dict(spec.env) == {}
    assert spec.readiness.path == "/health"
    assert spec.readiness.timeout_s >= 1800
    assert spec.api_prefix == "/v1"
    # SGLang has no Unix-socket option: the daemon probes and proxies to 127.0.0.1:replica.port.
    assert spec.listen == "tcp"
    assert SOCKET not in spec.argv


@pytest.mark.parametrize("port", [1024, 30000, 65535])
def test_sglang_listens_on_the_replica_port(
    plugins: Plugins, model: Model, replica: Replica, port: int
) -> None:
    spec = launch(plugins, "sglang", model(), replica("sglang", port=port))
    argv = list(spec.argv)
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == str(port)
    assert argv.count("--port") == 1
    assert spec.listen == "tcp"


def test_sglang_validation_pass_with_port_zero_builds_the_argv(
    plugins: Plugins, model: Model, replica: Replica
) -> None:
    # The daemon asks for replica 0's spec with port 0 only to validate the options; it must not raise.
    spec = launch(plugins, "sglang", model(), replica("sglang", options={"max_model_len": 4096}))
    argv = list(spec.argv)
    assert argv[argv.index("--port") + 1] == "0"
    assert tail(spec, SGLANG_HEAD) == ["--context-length", "4096"]
    assert spec.listen == "tcp"
    # ...and bad options are still reported in that pass.
    with pytest.raises(ValueError, match="launch option 'max_model_len'"):
        launch(plugins, "sglang", model(), replica("sglang", options={"max_model_len": "lots"}))


def test_sglang_two_gpus(plugins: Plugins, model: Model, replica: Replica) -> None:
    spec = launch(plugins, "sglang", model(), replica("sglang", gpus=(0, 1), port=30002))
    argv = list(spec.argv)
    assert argv[argv.index("--tp-size") + 1] == "2"
    assert argv[argv.index("--port") + 1] == "30002"
    assert dict(spec.env) == {}


def test_sglang_maps_well_known_options_to_its_own_flags(
    plugins: Plugins, model: Model, replica: Replica
) -> None:
    options = {
        "max_model_len": 4096,
        "gpu_memory_utilization": 0.8,
        "dtype": "half",
        "quantization": "fp8",
        "trust_remote_code": True,
        "enforce_eager": True,
        "schedule_policy": "lpm",
    }
    spec = launch(plugins, "sglang", model(), replica("sglang", options=options, port=30000))
    assert tail(spec, SGLANG_HEAD) == [
        "--context-length",
        "4096",
        "--mem-fraction-static",
        "0.8",
        "--dtype",
        "half",
        "--quantization",
        "fp8",
        "--trust-remote-code",
        "--disable-cuda-graph",
        "--schedule-policy",
        "lpm",
    ]


def test_sglang_rejects_two_options_for_one_flag(
    plugins: Plugins, model: Model, replica: Replica
) -> None:
    options = {"max_model_len": 4096, "context_length": 8192}
    with pytest.raises(ValueError, match="'max_model_len' and 'context_length' both set --context-length"):
        launch(plugins, "sglang", model(), replica("sglang", options=options, port=30000))


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
@pytest.mark.parametrize("value", [30000, "30000", 0])
@pytest.mark.parametrize("port", [0, 30000])
def test_port_option_is_refused_because_the_daemon_picks_it(
    plugins: Plugins, model: Model, replica: Replica, engine: str, value: object, port: int
) -> None:
    # Refused in the validation pass (port 0) and at the real launch alike; the daemon turns it into a 400.
    with pytest.raises(ValueError, match="launch option 'port' would set --port") as excinfo:
        launch(plugins, engine, model(), replica(engine, options={"port": value}, port=port))
    message = str(excinfo.value)
    assert "the daemon picks where each replica listens" in message
    assert "port" in message.split("the daemon picks", 1)[1]


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
@pytest.mark.parametrize("name", ["host", "po"])
def test_listening_options_name_the_daemon_as_the_chooser(
    plugins: Plugins, model: Model, replica: Replica, engine: str, name: str
) -> None:
    # "po" is refused too: argparse would expand the prefix to --port.
    with pytest.raises(ValueError, match="the daemon picks where each replica listens"):
        launch(plugins, engine, model(), replica(engine, options={name: "x"}, port=30000))


@pytest.mark.parametrize(
    ("engine", "name", "reason"),
    [
        ("vllm", "uds", "the daemon picks where each replica listens"),
        ("vllm", "model", "option model_path"),
        ("sglang", "model_path_x", None),  # not a prefix of any controlled flag: passes through
        ("sglang", "served_model_name", "its model uid"),
        ("sglang", "tp", "number of GPUs"),
        ("vllm", "data_parallel_size", "number of GPUs"),
    ],
)
def test_refusals_say_why(
    plugins: Plugins, model: Model, replica: Replica, engine: str, name: str, reason: str | None
) -> None:
    if reason is None:
        launch(plugins, engine, model(), replica(engine, options={name: "x"}))
        return
    with pytest.raises(ValueError, match=reason):
        launch(plugins, engine, model(), replica(engine, options={name: "x"}))
