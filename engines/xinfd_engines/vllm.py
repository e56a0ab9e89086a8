"""The vLLM engine: each replica runs vLLM's own OpenAI-compatible server on the replica's Unix socket.

vLLM's server already implements what xinfd's worker host would (HTTP, streaming, continuous batching,
cancellation on disconnect), so the replica process *is* ``python -m vllm.entrypoints.openai.api_server`` and
the daemon proxies to it. It listens on ``replica.socket_path`` through ``--uds`` (vLLM PR #18097), so no TCP
port is opened and no port has to be chosen.

``--enable-thinking`` is not a vLLM flag (its parser would refuse to start): it becomes the replica's default
``chat_template_kwargs`` (``OpenAIServerEngine.launch``). This module is imported by the daemon: standard
library and ``xinfd`` public types only; vLLM itself is imported by the child process, never here.
"""

from __future__ import annotations

from xinfd.hookspecs import RegisterEngine, hookimpl
from xinfd.types import Ability, ModelSpec, ReplicaContext
from xinfd_engines._common import Flag, OpenAIServerEngine, ServerCli, flag_value, tensor_parallel_size

NAME = "vllm"

# ``--uds`` was merged into vLLM in August 2025 (PR #18097), after the ``--runner`` flag used for embedding
# models (PR #21470); 0.10.2 is the first release that has both for certain. Older releases would fail at
# start with "unrecognized arguments: --uds". vLLM publishes CUDA wheels for Linux only.
REQUIREMENTS = ('vllm>=0.10.2 ; sys_platform == "linux"',)

CLI = ServerCli(
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
)



class VllmEngine(OpenAIServerEngine):
    """``vllm``: vLLM's server on the replica's Unix socket (``--uds``)."""

    name = NAME
    abilities: tuple[Ability, ...] = ("chat", "generate", "embed")
    description = "vLLM's OpenAI-compatible server (NVIDIA GPUs, Linux), proxied over a Unix socket"
    cli = CLI
    requirements = REQUIREMENTS
    server_module = "vllm.entrypoints.openai.api_server"

    def placement_argv(self, model: ModelSpec, replica: ReplicaContext, weights: str) -> list[str]:
        argv = [
            *flag_value("--model", weights),
            *flag_value("--served-model-name", replica.model_uid),
            "--uds",
            replica.socket_path,
            "--tensor-parallel-size",
            str(tensor_parallel_size(replica)),
        ]
        # A model registered only for embeddings must run vLLM's pooling runner, or /v1/embeddings is not
        # served. vLLM detects most embedding architectures itself; saying it also covers converted models.
        if set(model.abilities) == {"embed"} and "runner" not in replica.options:
            argv += ["--runner", "pooling"]
        return argv


ENGINE = VllmEngine()


@hookimpl
def xinfd_register_engines(register: RegisterEngine) -> None:
    register(ENGINE)
