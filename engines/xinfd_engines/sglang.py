"""The SGLang engine: each replica runs SGLang's own OpenAI-compatible server, which the daemon proxies to.

SGLang's HTTP server binds a TCP host and port only: it has no Unix-socket option (sgl-project/sglang#14258
was closed without one; PR #26006, which added ``--uds``, was closed unmerged). So the replica listens on
``127.0.0.1:replica.port``, a free loopback port the daemon reserves for every replica, and the launch spec
says ``listen="tcp"`` so the daemon probes and proxies there instead of the Unix socket. The port is the
daemon's decision like the socket is for vLLM: a ``port`` (or ``host``) launch option is refused.

``--enable-thinking`` is not an SGLang flag either: it becomes the replica's default ``chat_template_kwargs``
(``OpenAIServerEngine.launch``). This module is imported by the daemon: standard library and ``xinfd``
public types only.
"""

from __future__ import annotations

from typing import Literal

from xinfd.hookspecs import RegisterEngine, hookimpl
from xinfd.types import Ability, ModelSpec, ReplicaContext
from xinfd_engines._common import Flag, OpenAIServerEngine, ServerCli, flag_value, tensor_parallel_size

NAME = "sglang"

# The ``all`` extra pulls the server runtime (torch, sgl-kernel, flashinfer); the bare package is only the
# client-side language. The server flags used below exist since the 0.4 series. CUDA wheels: Linux only.
REQUIREMENTS = ('sglang[all]>=0.4 ; sys_platform == "linux"',)

LOOPBACK = "127.0.0.1"

CLI = ServerCli(
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
)



class SglangEngine(OpenAIServerEngine):
    """``sglang``: SGLang's server on ``127.0.0.1:<replica.port>`` (it has no Unix-socket option)."""

    name = NAME
    abilities: tuple[Ability, ...] = ("chat", "generate")
    description = "SGLang's OpenAI-compatible server (NVIDIA GPUs, Linux), proxied over loopback TCP"
    cli = CLI
    requirements = REQUIREMENTS
    server_module = "sglang.launch_server"
    listen: Literal["unix", "tcp"] = "tcp"

    def placement_argv(self, model: ModelSpec, replica: ReplicaContext, weights: str) -> list[str]:
        """``replica.port`` is 0 when the daemon only validates the launch options before anything starts; the
        command line is built all the same (with ``--port 0``) and never run."""
        return [
            *flag_value("--model-path", weights),
            *flag_value("--served-model-name", replica.model_uid),
            "--host",
            LOOPBACK,
            "--port",
            str(replica.port),
            "--tp-size",
            str(tensor_parallel_size(replica)),
        ]


ENGINE = SglangEngine()


@hookimpl
def xinfd_register_engines(register: RegisterEngine) -> None:
    register(ENGINE)
