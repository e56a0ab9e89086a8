"""xinfd's builtin engine plugins.

Each submodule (``xinfd_engines.vllm``, ``xinfd_engines.sglang``) is a pluggy plugin module registered under
the entry-point group ``xinfd`` in ``pyproject.toml``, exactly like a third-party plugin: the builtin engines
go through the public plugin path so that path is the one that gets tested. The package registers nothing.

Both engines ship their own OpenAI-compatible server, so their ``xinfd_engine_launch`` returns that server's
command line and the daemon proxies to it; neither engine library is imported here (the daemon stays free of
torch), only the standard library and ``xinfd``'s public types.
"""
