"""xinfd's builtin engine plugins.

Each submodule (``xinfd_engines.vllm``, ``xinfd_engines.sglang``) is a pluggy plugin module registered under
the entry-point group ``xinfd`` in ``pyproject.toml``, exactly like a third-party plugin: the builtin engines
go through the public plugin path so that path is the one that gets tested. The package registers nothing.

vLLM and SGLang ship their own OpenAI-compatible server, so their ``xinfd_engine_launch`` returns that
server's command line and the daemon proxies to it. ``transformers``, ``sentence_transformers``
(``embeddings``), ``llama.cpp`` (``llama_cpp``) and ``mlx`` are served by xinfd's worker host and return a
model object from ``xinfd_engine_load``. No engine library is imported at module level (the daemon stays free
of torch), only the standard library and ``xinfd``'s public types.
"""
