"""The vLLM engine: each replica runs vLLM's own OpenAI-compatible server on the replica's Unix socket.

vLLM's server already implements what xinfd's worker host would (HTTP, streaming, continuous batching,
cancellation on disconnect), so the replica process *is* ``python -m vllm.entrypoints.openai.api_server`` and
the daemon proxies to it. It listens on ``replica.socket_path`` through ``--uds`` (vLLM PR #18097), so no TCP
port is opened and no port has to be chosen.

This module is imported by the daemon: standard library and ``xinfd`` public types only; vLLM itself is
imported by the child process, never here.
"""

from __future__ import annotations

from xinfd.hookspecs import hookimpl
from xinfd.types import (
    Availability,
    EngineInfo,
    LaunchSpec,
    ModelSpec,
    Platform,
    RegisterEngine,
    ReplicaContext,
)
from xinfd_engines._common import (
    READINESS,
    Flag,
    ServerEngine,
    check_availability,
    flag_value,
    options_argv,
    tensor_parallel_size,
    weights_location,
)

NAME = "vllm"

# ``--uds`` was merged into vLLM in August 2025 (PR #18097), after the ``--runner`` flag used for embedding
# models (PR #21470); 0.10.2 is the first release that has both for certain. Older releases would fail at
# start with "unrecognized arguments: --uds". vLLM publishes CUDA wheels for Linux only.
REQUIREMENTS = ('vllm>=0.10.2 ; sys_platform == "linux"',)

ENGINE = ServerEngine(
    name=NAME,
    module="vllm",
    flags={
        "max_model_len": Flag("--max-model-len", "int"),
        "gpu_memory_utilization": Flag("--gpu-memory-utilization", "fraction"),
        "dtype": Flag("--dtype"),
        "quantization": Flag("--quantization"),
        "trust_remote_code": Flag("--trust-remote-code", "bool"),
        "enforce_eager": Flag("--enforce-eager", "bool"),
    },
    # Where it listens, what it is called and how many GPUs it spans are the daemon's decisions: a user value
    # would make the replica unreachable, misnamed, or ask for more GPUs than the slot table gave it.
    controlled=frozenset(
        {
            "--model",
            "--served-model-name",
            "--uds",
            "--host",
            "--port",
            "--tensor-parallel-size",
            "--pipeline-parallel-size",
            "--data-parallel-size",
        }
    ),
    consumed=frozenset({"model_path"}),
)

SERVER_MODULE = "vllm.entrypoints.openai.api_server"


@hookimpl
def xinfd_register_engines(register: RegisterEngine) -> None:
    """Declare the ``vllm`` engine."""
    register(
        EngineInfo(
            name=NAME,
            abilities=("chat", "generate", "embed"),
            description="vLLM's OpenAI-compatible server (NVIDIA GPUs, Linux), proxied over a Unix socket",
            probe_module="vllm",
        )
    )


@hookimpl
def xinfd_engine_dependencies(engine: str) -> list[str] | None:
    """What ``#vllm_dependencies#`` expands to; ``None`` for other engines."""
    if engine != NAME:
        return None
    return list(REQUIREMENTS)


@hookimpl
def xinfd_engine_availability(engine: str, model: ModelSpec, platform: Platform) -> Availability | None:
    """Linux, an NVIDIA GPU, vLLM installable or installed, and a model that lists the engine."""
    if engine != NAME:
        return None
    return check_availability(ENGINE, model, platform)


@hookimpl
def xinfd_engine_launch(engine: str, model: ModelSpec, replica: ReplicaContext) -> LaunchSpec | None:
    """The vLLM server command line for one replica, serving on ``replica.socket_path``.

    Nothing is put in the environment: the daemon adds ``CUDA_VISIBLE_DEVICES`` and the user's ``--env``
    values (``VLLM_USE_V1`` among them) and vLLM picks its defaults for everything else.

    :raises ValueError: no weights location, or an invalid launch option (the message names it).
    """
    if engine != NAME:
        return None
    argv = [
        replica.python,
        "-m",
        SERVER_MODULE,
        *flag_value("--model", weights_location(model, replica.options)),
        *flag_value("--served-model-name", replica.model_uid),
        "--uds",
        replica.socket_path,
        "--tensor-parallel-size",
        str(tensor_parallel_size(replica)),
    ]
    # A model registered only for embeddings must run vLLM's pooling runner, or /v1/embeddings is not served.
    # vLLM detects most embedding architectures itself; saying it explicitly also covers converted models.
    if set(model.abilities) == {"embed"} and "runner" not in replica.options:
        argv += ["--runner", "pooling"]
    argv += options_argv(ENGINE, replica.options)
    return LaunchSpec(argv=tuple(argv), env={}, readiness=READINESS, api_prefix="/v1")
