"""The replica-context encoding, as the worker imports it (the module lives in ``xinfd.replica_launch``).

The plugin contract builds worker launch specs in the daemon, and the core must not import the worker package, so
the code is a core module; this name stays so the worker (and plugins written against it) keep their imports.
"""

from __future__ import annotations

from xinfd.replica_launch import CONTEXT_ENV, decode_context, encode_context, worker_launch_spec

__all__ = ["CONTEXT_ENV", "decode_context", "encode_context", "worker_launch_spec"]
