"""The systemd notify protocol (``Type=notify``): one datagram per state change, no dependency needed.

Without ``NOTIFY_SOCKET`` (not under systemd, or in a container) every call is a cheap no-op.

What the daemon sends: ``READY=1`` once both sockets serve, ``STATUS=`` lines whenever the summary
changes (launches in progress, replicas ready), ``WATCHDOG=1`` at half of ``WatchdogSec`` from a task on the
event loop — so a loop stuck in a blocking call stops the pings and systemd restarts the daemon — and
``STOPPING=1`` when the drain begins.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

STATUS_POLL_SECONDS = 1.0


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``, ``"STATUS=..."``) to systemd; returns whether it was sent."""
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        # Non-blocking: a receiver whose queue is full (net.unix.max_dgram_qlen, 10 by default) must never
        # block the event loop; the message is dropped and logged instead.
        with socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        ) as sock:
            sock.connect(address)
            sock.send(message.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify(%s) failed: %s", message.split("\n")[0], exc)
        return False


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``); None when no watchdog is asked for.

    ``WATCHDOG_PID``, when set, names the process that must ping; any other process (a child that inherited
    the environment) must not.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2 / 1_000_000


async def watchdog_loop(env: Mapping[str, str] | None = None) -> None:
    """Ping the watchdog forever (returns at once when there is no watchdog)."""
    interval = watchdog_interval(env)
    if interval is None:
        return
    log.info("systemd watchdog: pinging every %.1fs", interval)
    while True:
        notify("WATCHDOG=1", env)
        await asyncio.sleep(interval)


async def status_loop(
    summary: Callable[[], str], env: Mapping[str, str] | None = None, *, poll: float = STATUS_POLL_SECONDS
) -> None:
    """Send ``STATUS=<summary>`` whenever the summary changes (``systemctl status`` shows the last one)."""
    env = os.environ if env is None else env
    if not env.get("NOTIFY_SOCKET"):
        return
    last = None
    while True:
        text = summary().replace("\n", " ")
        if text != last:
            notify(f"STATUS={text}", env)
            last = text
        await asyncio.sleep(poll)


def without_notify_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` minus the notify variables: replicas must not talk to systemd as if they were the daemon."""
    drop = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}
    return {k: v for k, v in env.items() if k not in drop}
