"""The composition root: parse flags, load settings, build the parts, serve, and shut down in order.

Shutdown order on SIGTERM/SIGINT: stop accepting (both sites), drain nothing new, terminate every replica group
(signal, grace period, SIGKILL), remove the control socket, exit 0. Signal handlers only set an event; the main
coroutine acts on it. The daemon runs in the foreground and never daemonizes itself (systemd and containers
supervise it).
"""

from __future__ import annotations

# isort: off
import xinfd.without_tls  # noqa: F401  # first: asyncio and aiohttp load without TLS (see the module)

# isort: on
import argparse
import asyncio
import contextlib
import errno
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from aiohttp import web

from xinfd import __version__
from xinfd.api.connections import ConnectionLimits, GuardedAppRunner, raise_fd_limit, tcp_peer, unix_peer
from xinfd.api.control import make_control_app
from xinfd.api.metrics import Metrics
from xinfd.api.openai import make_api_app
from xinfd.api.peers import secure_socket
from xinfd.api.state import DaemonState
from xinfd.config import Settings, describe, load_settings, parse_launch_item, reference_toml, settings_table
from xinfd.errors import ConfigError, XinfdError
from xinfd.gpus import describe_inventory, detect_platform
from xinfd.lifecycle import Lifecycle
from xinfd.logs import configure_logging
from xinfd.orphans import kill_orphans
from xinfd.plugins import make_plugin_manager
from xinfd.preloading import PreloadingSpawner, start_preloads
from xinfd.reaper import Reaper
from xinfd.registry import ModelRegistry
from xinfd.sdnotify import notify, without_notify_env
from xinfd.supervisor import (
    LaunchPolicy,
    LaunchRequest,
    ModelManager,
    RuntimeDir,
    UnsafeRuntimeDirError,
    replica_settings,
    supervision_options,
)
from xinfd.venvs.provider import VenvProvider

log = logging.getLogger("xinfd")

EXIT_USAGE = 2
EXIT_RUNTIME = 1


class StartupError(Exception):
    """Start-up cannot proceed (socket taken, port in use); the message is the one line shown to the operator."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xinfd", description="xinfd: model-serving supervisor daemon (runs in the foreground)."
    )
    parser.add_argument(
        "--config", metavar="PATH", help="TOML config file (default /etc/xinfd/xinfd.toml if present)"
    )
    parser.add_argument("-H", "--host", help="front-end address (default 127.0.0.1)")
    parser.add_argument("-p", "--port", type=int, help="front-end port (default 9997)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument(
        "--launch",
        action="append",
        metavar="NAME[:REPLICAS]",
        help="launch this model once serving (repeatable), e.g. --launch echo:2",
    )
    parser.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse config keys and XINFERENCE_*/XINFD_* variables that are not settings (exit 2)",
    )
    parser.add_argument(
        "--print-reference", action="store_true", help="print the reference config (etc/xinfd.toml) and exit"
    )
    parser.add_argument(
        "--settings-table", action="store_true", help="print every setting as a Markdown table and exit"
    )
    parser.add_argument("--version", action="version", version=f"xinfd {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "launch": tuple(args.launch) if args.launch else None,
    }
    if args.print_reference or args.settings_table:
        print(reference_toml() if args.print_reference else settings_table(), end="")
        return 0
    try:
        settings = load_settings(config_path=args.config, cli=cli, strict=args.strict)
    except ConfigError as exc:
        print(f"xinfd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.print_config:
        for warning in settings.warnings:
            print(f"xinfd: warning: {warning}", file=sys.stderr)
        print(describe(settings), end="")
        return 0
    configure_logging(
        settings.log_level,
        log_file=settings.home / "logs" / "xinfd.log",
        max_bytes=settings.log_max_bytes,
        backups=settings.log_backups,
    )
    for warning in settings.warnings:
        log.warning("%s", warning)
    try:
        # A reload is never strict: a SIGHUP must not stop a serving daemon; unknown names are logged.
        asyncio.run(serve(settings, reload=lambda: load_settings(config_path=args.config, cli=cli)))
    except StartupError as exc:
        log.error("%s", exc)
        print(f"xinfd: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    return 0


def claim_control_socket(path: Path) -> None:
    """Refuse to start if another daemon answers on ``path``; remove a stale socket left by a crash."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
            log.info("removing stale control socket %s", path)
            path.unlink(missing_ok=True)
            return
        raise StartupError(f"cannot check control socket {path}: {exc}") from exc
    finally:
        probe.close()
    raise StartupError(f"another xinfd is already running on control socket {path}")


async def serve(
    settings: Settings, *, ready: asyncio.Event | None = None, reload: Callable[[], Settings] | None = None
) -> None:
    """Run the daemon until SIGTERM/SIGINT (drain first, issue 6); SIGHUP re-reads settings with ``reload``."""
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    claim_control_socket(settings.control_socket)
    # Subreaper, and reaper of what it adopts: correct as a container's PID 1 too (xinfd.reaper).
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    plugins = make_plugin_manager()
    ModelRegistry.for_home(home).install(plugins.models)  # builtin etc/models + user registrations
    for failure in plugins.failures:
        log.warning("plugin %s not loaded: %s", failure.name, failure.error)
    platform = detect_platform(
        settings.gpus, venv_enabled=settings.enable_virtual_env, declared_from=settings.sources["gpus"]
    )
    log.info("GPU inventory: %s", describe_inventory(platform))
    # Issue 4: replica groups a previous daemon left (kill -9, OOM) die before anything launches.
    kill_orphans(home)
    # Replica sockets go to a directory only the daemon's user can use; its leftovers go first.
    try:
        runtime = RuntimeDir.prepare(home)
    except UnsafeRuntimeDirError as exc:
        raise StartupError(exc.message) from exc
    # Connections are capped below the descriptor limit, so a flood is answered 503, never EMFILE.
    fd_budget = raise_fd_limit()
    # Model venvs (issue 3): used even with the global toggle off (a launch may pass --enable-virtual-env);
    # crash leftovers of an earlier run (half-built venvs) are removed before anything launches.
    venvs = VenvProvider(
        home=home,
        plugins=plugins,
        enabled=settings.enable_virtual_env,
        skip_installed=settings.virtual_env_skip_installed,
        build_timeout=settings.virtual_env_build_timeout,
        stall_timeout=settings.virtual_env_stall_timeout,
        wheel_cache=settings.wheel_cache,
    )
    venvs.startup_cleanup()
    base_env = without_notify_env(os.environ)  # replicas must not talk to systemd as the daemon (issue 6)
    spawner = PreloadingSpawner(log_dir=home / "logs", enabled=settings.fork_server,
                                start_timeout=settings.launch_timeout)
    manager = ModelManager(
        **supervision_options(settings, platform),
        plugins=plugins,
        platform=platform,
        home=home,
        spawner=spawner,
        stop_grace=settings.stop_grace_period,
        launch_timeout=settings.launch_timeout,
        environments=venvs,
        base_env=base_env,
        replica_settings=lambda: replica_settings(state.settings),
        run_dir=runtime.path,
    )
    state = DaemonState(settings=settings, manager=manager, metrics=Metrics(), venvs=venvs,
                        fork_servers=spawner.servers)
    state.metrics.watch_manager(
        manager, pool_protocol=lambda: state.settings.inference_pool_metrics
    )  # replica states, restarts, queue, GPU slots at scrape time (issue 6); InferencePool gauges if asked
    venvs.on_build = state.metrics.venv_build
    limits = _connection_limits(state, fd_budget)
    # keepalive_timeout: an idle connection is closed between requests; the head deadline and the caps are
    # the guard's (xinfd.api.connections), the body deadline the handlers' (xinfd.api.bodies).
    api_runner = GuardedAppRunner(
        make_api_app(state),
        limits=limits,
        peer_of=tcp_peer,
        name="API",
        handler_cancellation=True,
        access_log=logging.getLogger("aiohttp.access"),
        keepalive_timeout=settings.keepalive_timeout,
    )
    control_runner = GuardedAppRunner(
        make_control_app(state),
        limits=limits,
        peer_of=unix_peer,
        name="control socket",
        handler_cancellation=True,
        keepalive_timeout=settings.keepalive_timeout,
    )
    await api_runner.setup()
    await control_runner.setup()
    lifecycle = Lifecycle(
        state,
        reload=reload,
        apply_log_level=lambda level: logging.getLogger().setLevel(level),
        apply=lambda new, changed: manager.set_limits(
            max_concurrency=new.replica_max_concurrency, max_queue=new.model_queue_size
        ),
    )
    lifecycle.install_signal_handlers(asyncio.get_running_loop())
    preloads: list[asyncio.Task[bool]] = []
    try:
        await _start_sites(settings, state, api_runner, control_runner)
        log.info(
            "xinfd %s serving on %s, control socket %s, engines: %s",
            __version__,
            state.front_end_url,
            settings.control_socket,
            ", ".join(sorted(plugins.engines)) or "none",
        )
        notify(f"READY=1\nSTATUS=serving on {state.front_end_url}\nMAINPID={os.getpid()}")
        if settings.fork_server:  # fork servers for the first launches, started in the background
            preloads = start_preloads(spawner, plugins.engines, settings.preload_engines, base_env)
        manager.restore(LaunchPolicy.from_settings(state.settings))  # the desired state of the previous run
        for item in settings.launch:
            if parse_launch_item(item)[0] not in manager.models:  # restored already
                _launch_at_start(manager, item)
        if ready is not None:
            ready.set()
        lifecycle.start_background()
        await lifecycle.run()  # until SIGTERM/SIGINT, then the drain (issue 6)
        log.info("shutting down: stopping replicas")
    finally:
        state.draining = True
        await lifecycle.close()
        await manager.close()
        for task in preloads:
            task.cancel()
        await spawner.close()  # after the replicas: a fork server's children die with it
        reaper.close()
        await api_runner.cleanup()
        await control_runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            settings.control_socket.unlink()
        runtime.cleanup()
        log.info("xinfd stopped")


async def _start_sites(
    settings: Settings, state: DaemonState, api_runner: web.AppRunner, control_runner: web.AppRunner
) -> None:
    # Create the control socket with 0600 from the start (umask), not chmod after: no window where others connect.
    old_umask = os.umask(0o177)
    try:
        await web.UnixSite(control_runner, str(settings.control_socket)).start()
    finally:
        os.umask(old_umask)
    try:
        secure_socket(settings.control_socket, group=settings.control_socket_group)  # 0600, or 0660 + group
    except (KeyError, PermissionError) as exc:
        raise StartupError(
            f"cannot give control socket {settings.control_socket} group {settings.control_socket_group!r}: "
            f"{'no such group' if isinstance(exc, KeyError) else exc}"
        ) from exc
    try:
        site = web.TCPSite(api_runner, settings.host, settings.port)
        await site.start()
    except OSError as exc:
        raise StartupError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from exc
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    port = settings.port
    server = getattr(site, "_server", None)
    if port == 0 and server is not None and server.sockets:
        port = server.sockets[0].getsockname()[1]
    state.front_end_url = f"http://{host}:{port}"


def _connection_limits(state: DaemonState, fd_budget: int) -> Callable[[], ConnectionLimits]:
    """The caps of both sockets, from the current settings (SIGHUP applies them to new connections)."""
    cache: dict[int, ConnectionLimits] = {}

    def current() -> ConnectionLimits:
        settings = state.settings
        limits = cache.get(id(settings))
        if limits is None:
            cache.clear()
            limits = cache[id(settings)] = ConnectionLimits.from_settings(settings, fd_budget=fd_budget)
            if limits.max_connections < settings.max_connections:
                log.warning(
                    "max_connections %d lowered to %d to stay under the descriptor limit",
                    settings.max_connections,
                    limits.max_connections,
                )
        return limits

    return current


def _launch_at_start(manager: ModelManager, item: str) -> None:
    """Start one ``--launch`` model; a failure is logged, never fatal (the daemon keeps serving)."""
    try:
        name, replicas = parse_launch_item(item)
        manager.start_launch(LaunchRequest(model_name=name, replica=replicas))
    except (XinfdError, ConfigError) as exc:
        log.error("launch of %r at start-up refused: %s", item, exc)


if __name__ == "__main__":
    sys.exit(main())
