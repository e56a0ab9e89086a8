"""The daemon's life between "serving" and "stopped": SIGHUP reload, SIGTERM drain, systemd pings.

Signal handlers only set a flag and wake the loop (supervisor's ``SignalReceiver`` pattern); ``Lifecycle.run``
acts on them. TERM/INT = drain and return (the caller then stops replicas); HUP = reload the settings that can
change without a restart and log each change. Settings that need a restart (addresses, home, sockets) keep
their old values and the log says so.

Drain, in the order a load balancer needs it: the moment TERM arrives, readiness is withdrawn (``/health``
and ``/health/models/<uid>`` answer 503 "draining") while new requests are still served for ``drain_grace``
seconds — a balancer only learns of the drain at its next health check, and requests it sends meanwhile must
not fail. Then new requests get 503 with ``Connection: close`` (``drain_middleware``), and requests already
accepted — streams included — get ``drain_timeout`` seconds to finish before the replicas are stopped under
them. With ``drain_grace = 0`` (the default, for a daemon without a balancer) both steps happen at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

from xinfd.config import DECLARATIONS, RELOADABLE, SECRET_FIELDS, Settings
from xinfd.logs import rotate_forever
from xinfd.sdnotify import notify, status_loop, watchdog_loop

log = logging.getLogger(__name__)

DRAIN_POLL_SECONDS = 0.05


def merge_reload(old: Settings, new: Settings) -> tuple[Settings, list[str], list[str]]:
    """``old`` with the reloadable settings of ``new``; returns (merged, changed, ignored-needing-restart).

    Which settings a SIGHUP may change is each setting's declaration (``reload``); the [[gpus]] inventory
    always needs a restart.
    """
    changed, ignored, updates = [], [], {}
    for name in [*DECLARATIONS, "gpus"]:
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        if name in RELOADABLE:
            updates[name] = after
            changed.append(name)
        else:
            ignored.append(name)
    sources = dict(old.sources)
    sources.update({name: new.sources.get(name, "default") for name in changed})
    merged = dataclasses.replace(old, **updates, sources=sources, warnings=new.warnings)
    return merged, changed, ignored


def _shown(settings: Settings, name: str) -> str:
    value = getattr(settings, name)
    if name in SECRET_FIELDS:
        return f"{len(value)} key(s)" if isinstance(value, tuple) else "***"
    return ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def status_summary(state: Any) -> str:
    """One line for ``systemctl status``: what is serving, what is launching."""
    models = list(state.manager.models.values())
    launching = [m.uid for m in models if m.state == "LAUNCHING"]
    replicas = [r for m in models for r in m.replicas]
    ready = sum(1 for r in replicas if r.is_ready)
    if state.draining or getattr(state, "withdrawn", False):
        return f"draining: {state.in_flight} request(s) in flight"
    text = f"serving on {state.front_end_url}: {len(models)} model(s), {ready}/{len(replicas)} replicas ready"
    if launching:
        text += f"; launching {', '.join(sorted(launching))}"
    return text


class Lifecycle:
    """Waits for signals and acts on them; owns the background tasks of a serving daemon."""

    def __init__(
        self,
        state: Any,
        *,
        reload: Callable[[], Settings] | None = None,
        apply_log_level: Callable[[str], None] | None = None,
        apply: Callable[[Settings, list[str]], None] | None = None,
    ) -> None:
        self.state = state
        self._reload = reload
        self._apply_log_level = apply_log_level
        # Pushes reloaded values into the running parts that copied them at start (routers' limits).
        self._apply = apply
        self._stop = asyncio.Event()
        self._hup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._hup.set)

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._hup.set()

    def start_background(self) -> None:
        settings = self.state.settings
        self._tasks = [
            asyncio.create_task(watchdog_loop(), name="systemd watchdog"),
            asyncio.create_task(status_loop(lambda: status_summary(self.state)), name="systemd status"),
            asyncio.create_task(
                rotate_forever(
                    self.state.manager.log_dir, max_bytes=settings.log_max_bytes, backups=settings.log_backups
                ),
                name="log rotation",
            ),
        ]

    async def run(self) -> None:
        """Serve until TERM/INT, reloading on HUP; then drain and return."""
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while not self._stop.is_set():
                hup = asyncio.ensure_future(self._hup.wait())
                await asyncio.wait({stop, hup}, return_when=asyncio.FIRST_COMPLETED)
                if self._hup.is_set():
                    self._hup.clear()
                    self.reload()
                hup.cancel()
        finally:
            stop.cancel()
        await self.drain()

    def reload(self) -> None:
        """Re-read file and environment; a bad new config is logged and the old one kept."""
        if self._reload is None:
            log.info("SIGHUP: no configuration source to reload from")
            return
        try:
            new = self._reload()
        except Exception as exc:  # a ConfigError or an unreadable file: keep serving with the old settings
            log.error("SIGHUP: reload failed, keeping the current configuration: %s", exc)
            return
        merged, changed, ignored = merge_reload(self.state.settings, new)
        self.state.settings = merged
        # What waits for a restart is what the files and environment say now, not an accumulation of reloads.
        self.state.pending = {name: (getattr(new, name), new.sources.get(name, "default")) for name in ignored}
        for name in changed:
            log.info("SIGHUP: %s = %s (%s)", name, _shown(merged, name), merged.sources.get(name))
        for name in ignored:
            log.warning("SIGHUP: %s changed but needs a restart; keeping %s", name, _shown(merged, name))
        for warning in new.warnings:
            log.warning("SIGHUP: %s", warning)
        if "log_level" in changed and self._apply_log_level is not None:
            self._apply_log_level(merged.log_level)
        if changed and self._apply is not None:
            self._apply(merged, changed)
        log.info(
            "SIGHUP: configuration reloaded (%d change(s), %d needing a restart)", len(changed), len(ignored)
        )

    async def drain(self) -> None:
        """Withdraw readiness, keep serving for ``drain_grace``, then refuse new requests and wait up to
        ``drain_timeout`` for the accepted ones to finish."""
        state = self.state
        state.withdrawn = True
        grace = state.settings.drain_grace
        if grace > 0:
            notify(f"STATUS=not ready; still serving new requests for {grace:g}s")
            log.info("draining: readiness withdrawn; new requests still served for %gs", grace)
            await asyncio.sleep(grace)
        state.draining = True
        timeout = state.settings.drain_timeout
        notify(f"STOPPING=1\nSTATUS=draining {state.in_flight} request(s), up to {timeout:g}s")
        log.info("draining: %d request(s) in flight, waiting up to %gs", state.in_flight, timeout)
        deadline = time.monotonic() + timeout
        while state.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        if state.in_flight:
            log.warning("drain timeout: cutting %d request(s) still in flight", state.in_flight)
        else:
            log.info("drained: no request in flight")
        notify("STATUS=stopping replicas")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
