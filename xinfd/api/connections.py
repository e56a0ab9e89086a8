"""Connection hygiene for both of the daemon's sockets: caps on open connections and a deadline for the head.

aiohttp serves every connection it accepts for as long as the client keeps it open, so a few hundred clients
that connect and send nothing (or one byte a minute) hold as many file descriptors, until ``accept`` fails
with "Too many open files" and ``/health``, ``xinfctl list`` and launches stop being answered. Here each
accepted connection passes through ``GuardedProtocol`` before aiohttp sees it:

* **caps**: at most ``max_connections`` connections per socket, and ``max_connections_per_peer`` per client
  (its IP address on the API, its user id from ``SO_PEERCRED`` on the control socket). The connection over a
  cap is answered ``503`` with ``Retry-After`` and closed, never left to hang;
* **head deadline**: a new connection has ``request_head_timeout`` seconds to send its request line and headers,
  or it is dropped. Between requests aiohttp's own ``keepalive_timeout`` closes idle connections; the body has
  its deadline where handlers read it (``xinfd.api.bodies``).

``GuardedAppRunner`` hands the guard to the sites instead of aiohttp's protocol factory (its public ``server``
property), so aiohttp's request handling is unchanged. The limits are read per connection: SIGHUP applies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import socket
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from xinfd.api.peers import read_peer_creds
from xinfd.api.security import normalize_ip
from xinfd.http_errors import error_body

log = logging.getLogger(__name__)

# Descriptors kept outside the connection caps: replica sockets and pipes, logs, venv builds, the listeners.
FD_RESERVE = 256
# Refused connections linger this long (reading and discarding what the client sent) so the 503 reaches it
# instead of being lost to a reset; beyond this many lingering at once they are closed at once.
_LINGER_SECONDS = 0.5
_MAX_LINGERING = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLimits:
    """What one socket accepts: open connections in all and per peer, and the head deadline in seconds."""

    max_connections: int
    max_per_peer: int
    head_timeout: float

    @classmethod
    def from_settings(cls, settings: Any, *, fd_budget: int | None = None) -> ConnectionLimits:
        total = settings.max_connections
        if fd_budget is not None:
            total = min(total, fd_budget)
        return cls(
            max_connections=total,
            max_per_peer=min(settings.max_connections_per_peer, total),
            head_timeout=settings.request_head_timeout,
        )


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one; return the descriptors left for connections.

    Two sockets share the budget, so each gets half of what remains after ``FD_RESERVE``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    return max(1, (soft - FD_RESERVE) // 2)


def tcp_peer(transport: asyncio.BaseTransport) -> Hashable:
    """A TCP client: its IP address (IPv4-mapped IPv6 as IPv4), the same one ``allowed_ips`` checks."""
    peername = transport.get_extra_info("peername")
    if isinstance(peername, tuple | list) and peername:
        return normalize_ip(str(peername[0])) or str(peername[0])
    return None


def unix_peer(transport: asyncio.BaseTransport) -> Hashable:
    """A control-socket client: its user id (``SO_PEERCRED``)."""
    sock = transport.get_extra_info("socket")
    creds = read_peer_creds(sock if isinstance(sock, socket.socket) else None)
    return None if creds is None else creds.uid


def _refusal(message: str) -> bytes:
    body = json.dumps(error_body(message, error_type="server_error", code="too_many_connections")).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class ConnectionGuard:
    """The protocol factory of one socket: counts connections and wraps aiohttp's handler of each."""

    def __init__(
        self,
        server: Callable[[], Any],
        *,
        limits: Callable[[], ConnectionLimits],
        peer_of: Callable[[asyncio.BaseTransport], Hashable],
        name: str,
    ) -> None:
        self.server = server
        self.limits = limits
        self.peer_of = peer_of
        self.name = name
        self.open = 0
        self.per_peer: Counter[Hashable] = Counter()
        self.lingering = 0
        self.refused = 0
        self.head_timeouts = 0

    def __call__(self) -> GuardedProtocol:
        return GuardedProtocol(self)

    def admit(self, peer: Hashable) -> str | None:
        """None if a new connection from ``peer`` may be served, else why not."""
        limits = self.limits()
        if self.open >= limits.max_connections:
            return f"the {self.name} has {self.open} open connections, its limit; retry later"
        if self.per_peer[peer] >= limits.max_per_peer:
            return f"this client has {self.per_peer[peer]} open connections to the {self.name}, its limit"
        return None


class GuardedProtocol(asyncio.Protocol):
    """One accepted connection: refused with 503 over a cap, dropped without a head in time, else aiohttp's."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard
        self._inner: Any = None
        self._transport: asyncio.Transport | None = None
        self._peer: Hashable = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._lingering = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        guard = self._guard
        self._peer = guard.peer_of(transport)
        refusal = guard.admit(self._peer)
        if refusal is not None:
            self._refuse(transport, refusal)
            return
        guard.open += 1
        guard.per_peer[self._peer] += 1
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(guard.limits().head_timeout, self._head_expired)
        self._inner = guard.server()
        self._inner.connection_made(transport)

    def _refuse(self, transport: asyncio.Transport, reason: str) -> None:
        guard = self._guard
        guard.refused += 1
        if guard.refused == 1 or guard.refused % 100 == 0:  # a flood must not flood the log too
            log.warning("refusing connection from %s (%d refused so far): %s", self._peer, guard.refused, reason)
        transport.write(_refusal(reason))
        if guard.lingering >= _MAX_LINGERING:
            transport.close()
            return
        # Read (and drop) what the client sends for a moment: closing with unread data would reset the
        # connection, and the client could lose the 503 before reading it.
        guard.lingering += 1
        self._lingering = True
        with contextlib.suppress(OSError, RuntimeError):
            if transport.can_write_eof():
                transport.write_eof()
        asyncio.get_running_loop().call_later(_LINGER_SECONDS, transport.close)

    def _head_expired(self) -> None:
        self._head_timer = None
        self._guard.head_timeouts += 1
        log.debug("closing connection from %s: no request head within the deadline", self._peer)
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return  # a refused connection: its bytes are dropped
        if self._head_timer is not None:
            window = self._tail + data
            if b"\r\n\r\n" in window:
                self._head_timer.cancel()
                self._head_timer = None
            else:
                self._tail = window[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is None:
            return None  # a refused connection: close on the client's EOF
        result: bool | None = self._inner.eof_received()
        return result

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        guard = self._guard
        if self._lingering:
            guard.lingering -= 1
            self._lingering = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._inner is None:
            return
        guard.open -= 1
        guard.per_peer[self._peer] -= 1
        if guard.per_peer[self._peer] <= 0:
            del guard.per_peer[self._peer]
        self._inner.connection_lost(exc)


class GuardedAppRunner(web.AppRunner):
    """An ``AppRunner`` whose sites accept connections through a ``ConnectionGuard``."""

    def __init__(
        self,
        app: web.Application,
        *,
        limits: Callable[[], ConnectionLimits],
        peer_of: Callable[[asyncio.BaseTransport], Hashable],
        name: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._guard_args = (limits, peer_of, name)
        self.guard: ConnectionGuard | None = None

    @property
    def server(self) -> Any:
        inner = super().server
        if inner is None:
            return None
        if self.guard is None or self.guard.server is not inner:
            limits, peer_of, name = self._guard_args
            self.guard = ConnectionGuard(inner, limits=limits, peer_of=peer_of, name=name)
        return self.guard
