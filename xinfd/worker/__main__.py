"""``python -m xinfd.worker``: one replica process, started by the daemon with the model venv's interpreter.

It reads its ``ReplicaContext`` and ``ModelSpec`` from ``XINFD_WORKER_CONTEXT`` (``xinfd.worker.launch``),
loads the model through its engine's ``load`` (``xinfd.hookspecs.Engine``), and serves it on
``replica.socket_path``. The daemon's settings for the replica (batching) come in ``replica.settings`` (the
max-tokens cap is applied by the daemon to each request it forwards); nothing here re-reads the daemon's
``XINFERENCE_*`` variables. The socket only starts listening after the load, so the daemon's readiness probe
(``GET /health``) means "loaded".

Exit codes: 0 stopped by SIGTERM/SIGINT; 1 serving failed; 2 bad environment (context, settings);
3 the model could not be loaded (the last line on stderr says why, for the daemon's launch error).

Environment (plugins are loaded exactly as in the daemon, by ``xinfd.plugins.make_plugin_manager``):
  ``XINFD_DISABLE_PLUGIN_AUTOLOAD=1``  skip the ``xinfd`` entry-point group (cf. pytest's equivalent);
  ``XINFD_PLUGINS``                    comma-separated ``module`` or ``module:attr`` plugins to register.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping
from types import FrameType

from xinfd.plugins import Plugins, make_plugin_manager
from xinfd.types import LoadedModel, ModelSpec, ReplicaContext
from xinfd.worker.host import make_worker_app, serve
from xinfd.worker.launch import CONTEXT_ENV, decode_context

log = logging.getLogger("xinfd.worker")

EXIT_SERVE_FAILED = 1
EXIT_BAD_ENVIRONMENT = 2
EXIT_LOAD_FAILED = 3


def configure_logging(label: str, env: Mapping[str, str]) -> None:
    """Log to stderr with the replica in every line; under systemd (``JOURNAL_STREAM``) without timestamps."""
    tag = label.replace("%", "%%")
    fmt = f"%(levelname)s [{tag}] %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in env:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr, force=True)


def load_model(plugins: Plugins, replica: ReplicaContext, model: ModelSpec) -> LoadedModel:
    """Ask the plugins for the model object; the error names the engine when no plugin provides it."""
    if replica.engine not in plugins.engines:
        failed = "; ".join(f"{f.name}: {f.error}" for f in plugins.failures)
        hint = f" (plugins that failed to load: {failed})" if failed else " (is its package installed?)"
        raise RuntimeError(f"no plugin provides the engine {replica.engine!r}{hint}")
    return plugins.load(replica.engine, model, replica)


async def run(replica: ReplicaContext, model: ModelSpec, env: Mapping[str, str]) -> int:
    """Load and serve; return the exit code. Loading runs inside the loop, for engines that need one."""
    try:
        plugins = make_plugin_manager(env=env)
    except Exception as exc:
        print(f"xinfd.worker: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_BAD_ENVIRONMENT
    try:
        loaded = load_model(plugins, replica, model)
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
        # The operator's cap (XINFERENCE_MAX_TOKENS) is applied by the daemon to every request it forwards, for
        # every engine, so a SIGHUP changes it at once; the replica neither knows nor re-reads it.
        max_tokens_cap=None,
        replica_label=replica_label(replica),
        engine=replica.engine,
        request_features=plugins.request_features(replica.engine),
        default_max_tokens=model.default_max_tokens,  # requests sent straight to the replica, not by the daemon
    )
    try:
        await serve(app, replica.socket_path)
    except OSError as exc:
        print(f"xinfd.worker: cannot serve on {replica.socket_path}: {exc}", file=sys.stderr, flush=True)
        return EXIT_SERVE_FAILED
    return 0


def replica_label(replica: ReplicaContext) -> str:
    """The replica's label as the daemon names it: the ``X-Xinfd-Replica`` header value and the log-line tag."""
    return replica.label


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
    pin_to_cores(replica)
    # The parent-death signal (SIGKILL) is set by the daemon's spawner before exec; it survives exec, and is
    # not reset here so that an engine ignoring SIGTERM still dies with the daemon.
    # A stop during a long load exits cleanly; serve() replaces this with its in-loop handler. An engine that
    # sets SIG_IGN while loading keeps it (see serve()).
    signal.signal(signal.SIGTERM, _exit_on_signal)
    return asyncio.run(run(replica, model, env))


def pin_to_cores(replica: ReplicaContext) -> None:
    """Pin the process to its cores from the daemon's CPU budget (``cpu_affinity``) before the engine loads,
    so every thread its libraries start inherits the mask. A refusal (a cpuset that changed) is logged, not fatal.
    """
    if not replica.cpu_affinity:
        return
    try:
        os.sched_setaffinity(0, replica.cpu_affinity)
    except (AttributeError, OSError) as exc:
        log.warning("cannot pin to cores %s: %s", list(replica.cpu_affinity), exc)
        return
    log.info("pinned to cores %s, %d thread(s)", list(replica.cpu_affinity), replica.cpu_threads)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main())
