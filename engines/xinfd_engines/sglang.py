"""The SGLang engine: each replica runs SGLang's own OpenAI-compatible server, which the daemon proxies to.

SGLang's HTTP server binds a TCP host and port only: it has no Unix-socket option (sgl-project/sglang#14258
was closed without one; PR #26006, which added ``--uds``, was closed unmerged). So the replica listens on
``127.0.0.1:replica.port``, a free loopback port the daemon reserves for every replica, and the launch spec
says ``listen="tcp"`` so the daemon probes and proxies there instead of the Unix socket. The port is the
daemon's decision like the socket is for vLLM: a ``port`` (or ``host``) launch option is refused.

This module is imported by the daemon: standard library and ``xinfd`` public types only.
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

NAME = "sglang"

# The ``all`` extra pulls the server runtime (torch, sgl-kernel, flashinfer); the bare package is only the
# client-side language. The server flags used below exist since the 0.4 series. CUDA wheels: Linux only.
REQUIREMENTS = ('sglang[all]>=0.4 ; sys_platform == "linux"',)

LOOPBACK = "127.0.0.1"

ENGINE = ServerEngine(
    name=NAME,
    module="sglang",
    # Same option names as vLLM, so a launch command works with either engine.
    flags={
        "max_model_len": Flag("--context-length", "int"),
        "gpu_memory_utilization": Flag("--mem-fraction-static", "fraction"),
        "dtype": Flag("--dtype"),
        "quantization": Flag("--quantization"),
        "trust_remote_code": Flag("--trust-remote-code", "bool"),
        # vLLM's "eager mode" is SGLang's running without CUDA graphs.
        "enforce_eager": Flag("--disable-cuda-graph", "bool"),
    },
    # SGLang spells several flags more than one way (``--tp``, ``--tp-size``, ``--tensor-parallel-size``);
    # every spelling of a flag the daemon decides is listed.
    controlled=frozenset(
        {
            "--model-path",
            "--model",
            "--served-model-name",
            "--host",
            "--port",
            "--tp-size",
            "--tp",
            "--tensor-parallel-size",
            "--dp-size",
            "--dp",
            "--data-parallel-size",
            "--pp-size",
            "--pipeline-parallel-size",
        }
    ),
    consumed=frozenset({"model_path"}),
)

SERVER_MODULE = "sglang.launch_server"


@hookimpl
def xinfd_register_engines(register: RegisterEngine) -> None:
    """Declare the ``sglang`` engine."""
    register(
        EngineInfo(
            name=NAME,
            abilities=("chat", "generate"),
            description="SGLang's OpenAI-compatible server (NVIDIA GPUs, Linux), proxied over loopback TCP",
            probe_module="sglang",
        )
    )


@hookimpl
def xinfd_engine_dependencies(engine: str) -> list[str] | None:
    """What ``#sglang_dependencies#`` expands to; ``None`` for other engines."""
    if engine != NAME:
        return None
    return list(REQUIREMENTS)


@hookimpl
def xinfd_engine_availability(engine: str, model: ModelSpec, platform: Platform) -> Availability | None:
    """Linux, an NVIDIA GPU, SGLang installable or installed, and a model that lists the engine."""
    if engine != NAME:
        return None
    return check_availability(ENGINE, model, platform)


@hookimpl
def xinfd_engine_launch(engine: str, model: ModelSpec, replica: ReplicaContext) -> LaunchSpec | None:
    """The SGLang server command line for one replica, on ``127.0.0.1:<replica.port>``.

    ``replica.port`` is 0 when the daemon only validates the launch options before anything starts; the
    command line is built all the same (with ``--port 0``) and never run.

    :raises ValueError: no weights location, or an invalid launch option (the message names it).
    """
    if engine != NAME:
        return None
    argv = [
        replica.python,
        "-m",
        SERVER_MODULE,
        *flag_value("--model-path", weights_location(model, replica.options)),
        *flag_value("--served-model-name", replica.model_uid),
        "--host",
        LOOPBACK,
        "--port",
        str(replica.port),
        "--tp-size",
        str(tensor_parallel_size(replica)),
        *options_argv(ENGINE, replica.options),
    ]
    return LaunchSpec(argv=tuple(argv), env={}, readiness=READINESS, api_prefix="/v1", listen="tcp")
