"""``python -m xinfd.worker``: one replica process, started by the daemon with the model venv's interpreter.

It reads its ``ReplicaContext`` and ``ModelSpec`` from ``XINFD_WORKER_CONTEXT`` (``xinfd.worker.launch``),
loads the engine through the plugin hook ``xinfd_engine_load``, and serves the model on
``replica.socket_path``. The socket only starts listening after the load, so the daemon's readiness probe
(``GET /health``) means "loaded".

Exit codes: 0 stopped by SIGTERM/SIGINT; 1 serving failed; 2 bad environment (context, settings);
3 the model could not be loaded (the last line on stderr says why, for the daemon's launch error).

Environment:
  ``XINFD_DISABLE_PLUGIN_AUTOLOAD=1``  skip the ``xinfd`` entry-point group (cf. pytest's equivalent);
  ``XINFD_WORKER_PLUGINS``             comma-separated ``module`` or ``module:attr`` plugins to register;
  ``XINFERENCE_MAX_TOKENS``            the operator's cap on completion tokens per request.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from importlib.metadata import entry_points
from types import FrameType

import pluggy

import xinfd.hookspecs
from xinfd.types import EmbeddingModel, ModelSpec, ReplicaContext, TextModel
from xinfd.worker.host import make_worker_app, serve
from xinfd.worker.launch import CONTEXT_ENV, decode_context

log = logging.getLogger("xinfd.worker")

EXIT_SERVE_FAILED = 1
EXIT_BAD_ENVIRONMENT = 2
EXIT_LOAD_FAILED = 3
DISABLE_AUTOLOAD_ENV = "XINFD_DISABLE_PLUGIN_AUTOLOAD"
PLUGINS_ENV = "XINFD_WORKER_PLUGINS"
MAX_TOKENS_ENV = "XINFERENCE_MAX_TOKENS"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def make_worker_plugin_manager(env: Mapping[str, str]) -> pluggy.PluginManager:
    """The worker's plugin manager: entry-point plugins (unless disabled), then explicitly named ones.

    Explicit plugins are registered last, so pluggy asks them first for ``firstresult`` hooks.

    :raises ImportError, AttributeError: if an explicitly named plugin cannot be imported (a configuration
        error, unlike a broken third-party entry point, which is only logged).
    """
    pm = pluggy.PluginManager(xinfd.hookspecs.PROJECT_NAME)
    pm.add_hookspecs(xinfd.hookspecs)
    if env.get(DISABLE_AUTOLOAD_ENV, "") not in ("1", "true", "yes"):
        load_entrypoint_plugins(pm)
    for spec in filter(None, (s.strip() for s in env.get(PLUGINS_ENV, "").split(","))):
        plugin = import_plugin(spec)
        if not pm.is_registered(plugin):
            pm.register(plugin, name=spec)
    pm.check_pending()  # a misspelled hookimpl fails here, not silently at call time
    return pm


def load_entrypoint_plugins(pm: pluggy.PluginManager) -> list[str]:
    """Register every plugin of the ``xinfd`` entry-point group; return the names registered.

    Unlike ``pm.load_setuptools_entrypoints``, a plugin that fails to import or register is logged with its
    name and skipped, so one broken package cannot take down the engines of all the others.
    """
    loaded = []
    for ep in entry_points(group=xinfd.hookspecs.PROJECT_NAME):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            if not pm.is_registered(plugin):
                pm.register(plugin, name=ep.name)
        except Exception as exc:  # any failure of third-party code; it must not stop the others
            log.warning("plugin %r (%s) is skipped: %s: %s", ep.name, ep.value, type(exc).__name__, exc)
            continue
        loaded.append(ep.name)
    return loaded


def import_plugin(spec: str) -> object:
    """Import ``module`` or ``module:attr`` (``attr`` may be dotted)."""
    module_name, _, attr = spec.partition(":")
    obj: object = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def parse_max_tokens_cap(raw: str | None) -> int | None:
    """``XINFERENCE_MAX_TOKENS``: empty or unset means no cap; otherwise a positive integer."""
    if raw is None or not raw.strip():
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_TOKENS_ENV} must be a positive integer, got {raw!r}")
    return value


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` when the parent dies, so a replica never outlives a crashed daemon.

    Best effort: elsewhere, or without a usable libc, it returns ``False``. (The signal fires when the parent
    *thread* that forked exits; the daemon spawns from its event-loop thread, which lives as long as it does.)
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        result = libc.prctl(
            _PR_SET_PDEATHSIG, ctypes.c_ulong(sig), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)
        )
    except (OSError, AttributeError) as exc:
        log.warning("cannot set the parent-death signal: %s", exc)
        return False
    if result != 0:
        log.warning("cannot set the parent-death signal: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


def configure_logging(label: str, env: Mapping[str, str]) -> None:
    """Log to stderr with the replica in every line; under systemd (``JOURNAL_STREAM``) without timestamps."""
    tag = label.replace("%", "%%")
    fmt = f"%(levelname)s [{tag}] %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in env:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr, force=True)


def load_model(pm: pluggy.PluginManager, replica: ReplicaContext, model: ModelSpec) -> object:
    """Ask the plugins for the model object; raise ``RuntimeError`` with a readable reason if none fits."""
    loaded = pm.hook.xinfd_engine_load(engine=replica.engine, model=model, replica=replica)
    if loaded is None:
        raise RuntimeError(f"no plugin provides the engine {replica.engine!r} (is its package installed?)")
    if not isinstance(loaded, TextModel | EmbeddingModel):
        raise RuntimeError(
            f"engine {replica.engine!r} returned {type(loaded).__name__}, which implements neither TextModel "
            "nor EmbeddingModel"
        )
    return loaded


async def run(replica: ReplicaContext, model: ModelSpec, env: Mapping[str, str]) -> int:
    """Load and serve; return the exit code. Loading runs inside the loop, for engines that need one."""
    try:
        cap = parse_max_tokens_cap(env.get(MAX_TOKENS_ENV))
        pm = make_worker_plugin_manager(env)
    except Exception as exc:
        print(f"xinfd.worker: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_BAD_ENVIRONMENT
    try:
        loaded = load_model(pm, replica, model)
    except Exception as exc:
        log.error("loading failed", exc_info=True)
        # The daemon reports the last lines of stderr, so the one line that says why comes last.
        print(
            f"xinfd.worker: cannot load model {model.name!r} with engine {replica.engine!r}: "
            f"{type(exc).__name__}: {exc}",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_LOAD_FAILED
    app = make_worker_app(
        loaded,
        model_uid=replica.model_uid,
        model_name=model.name,
        context_length=model.context_length,
        max_tokens_cap=cap,
        replica_label=replica_label(replica),
    )
    try:
        await serve(app, replica.socket_path)
    except OSError as exc:
        print(f"xinfd.worker: cannot serve on {replica.socket_path}: {exc}", file=sys.stderr, flush=True)
        return EXIT_SERVE_FAILED
    return 0


def replica_label(replica: ReplicaContext) -> str:
    """``<model_uid>-<replica_index>``: the ``X-Xinfd-Replica`` header value and the log-line tag."""
    return f"{replica.model_uid}-{replica.replica_index}"


def main(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    raw = env.get(CONTEXT_ENV)
    if not raw:
        print(
            f"xinfd.worker: {CONTEXT_ENV} is not set; replicas are started by the xinfd daemon",
            file=sys.stderr,
        )
        return EXIT_BAD_ENVIRONMENT
    try:
        replica, model = decode_context(raw)
    except (ValueError, KeyError, TypeError) as exc:
        print(f"xinfd.worker: {CONTEXT_ENV} is invalid: {exc}", file=sys.stderr)
        return EXIT_BAD_ENVIRONMENT
    configure_logging(replica_label(replica), env)
    set_parent_death_signal()
    # A stop during a long load exits cleanly; serve() replaces this with its in-loop handler. An engine that
    # sets SIG_IGN while loading keeps it (see serve()).
    signal.signal(signal.SIGTERM, _exit_on_signal)
    return asyncio.run(run(replica, model, env))


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main())
