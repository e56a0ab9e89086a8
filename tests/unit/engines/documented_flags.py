"""The server flags of vLLM and SGLang that xinfd puts on a command line, as their documentation lists them.

Checked by hand against the documented CLI of the oldest release each dependency placeholder allows
(``xinfd_engines.vllm.REQUIREMENTS``: ``vllm>=0.10.2``; ``xinfd_engines.sglang.REQUIREMENTS``:
``sglang[all]>=0.4``). A flag missing in that release makes the server exit with "unrecognized arguments" and
the replica restart forever, so ``test_server_flags.py`` asserts that every flag the engines emit is listed here;
adding a flag to an engine means reading the doc and adding it here with the place it is documented.
"""

from __future__ import annotations

# vLLM ``vllm serve`` / ``python -m vllm.entrypoints.openai.api_server``:
# - Frontend group (``vllm/entrypoints/openai/cli_args.py``; CLI reference https://docs.vllm.ai/en/v0.12.0/cli/serve/):
#   ``--host``, ``--port``, ``--uds`` ("Unix domain socket path. If set, host and port arguments are ignored";
#   added by vLLM PR #18097, first released in 0.10.2, hence the floor).
# - Engine arguments (``vllm/engine/arg_utils.py``, https://docs.vllm.ai/en/v0.8.5/serving/engine_args.html and
#   later pages): ``--model``, ``--served-model-name``, ``--dtype``, ``--max-model-len``, ``--quantization``,
#   ``--trust-remote-code``, ``--tensor-parallel-size``, ``--pipeline-parallel-size``, ``--data-parallel-size``,
#   ``--gpu-memory-utilization``, ``--enforce-eager``; ``--runner`` (generate / pooling, vLLM PR #21470, 0.10.1).
# Not a flag of any release: ``--enable-thinking`` (thinking is ``chat_template_kwargs.enable_thinking`` per
# request), which is why xinfd never emits it.
VLLM = frozenset({
    "--data-parallel-size",
    "--dtype",
    "--enforce-eager",
    "--gpu-memory-utilization",
    "--host",
    "--max-model-len",
    "--model",
    "--pipeline-parallel-size",
    "--port",
    "--quantization",
    "--runner",
    "--served-model-name",
    "--tensor-parallel-size",
    "--trust-remote-code",
    "--uds",
})

# SGLang ``python -m sglang.launch_server`` (``python/sglang/srt/server_args.py``; documented in
# ``docs/backend/server_arguments.md`` of the 0.4 series, https://docs.sglang.ai/backend/server_arguments.html):
# ``--model-path``, ``--host``, ``--port``, ``--tp-size`` (alias ``--tp``), ``--dp-size`` (alias ``--dp``),
# ``--context-length``, ``--mem-fraction-static``, ``--dtype``, ``--quantization``, ``--trust-remote-code``,
# ``--disable-cuda-graph``; ``--served-model-name`` is in ``server_args.py`` ("Override the model name returned
# by the v1/models endpoint"). No ``--enable-thinking`` and no ``--uds`` (listening is TCP only).
SGLANG = frozenset({
    "--context-length",
    "--disable-cuda-graph",
    "--dp",
    "--dp-size",
    "--dtype",
    "--host",
    "--mem-fraction-static",
    "--model-path",
    "--port",
    "--quantization",
    "--served-model-name",
    "--tp",
    "--tp-size",
    "--trust-remote-code",
})
