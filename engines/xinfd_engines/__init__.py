"""xinfd's builtin engine plugins.

Each submodule (``xinfd_engines.vllm``, ``xinfd_engines.sglang``...) defines one engine object
(``xinfd.hookspecs.Engine``) and registers it with one ``xinfd_register_engines`` hook; each is an entry point
of the group ``xinfd`` in ``pyproject.toml``, exactly like a third-party plugin: the builtin engines go through
the public plugin path so that path is the one that gets tested. The package registers nothing.

vLLM and SGLang ship their own OpenAI-compatible server, so their ``launch`` returns that server's command
line (``_common.OpenAIServerEngine``) and the daemon proxies to it. ``transformers``, ``sentence_transformers``
(``embeddings``), ``llama.cpp`` (``llama_cpp``) and ``mlx`` are served by xinfd's worker host
(``_local.LocalEngine``) and return a model object from ``load``. No engine library is imported at module
level (the daemon stays free of torch), only the standard library and ``xinfd``'s public types.
"""
