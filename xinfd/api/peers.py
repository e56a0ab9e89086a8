"""Who may use the control socket: SO_PEERCRED checked on every request, not only the socket's mode.

The socket is created 0600 (only the daemon's user), or 0660 with ``control_socket_group``. The mode is the
first gate; the peer-credential check is the second, so a socket made group-accessible by mistake (or a
directory whose permissions were loosened) still admits only the configured users and groups. Allowed: root,
the daemon's own user, ``control_allowed_users``, and members (primary or supplementary) of
``control_socket_group`` or ``control_allowed_groups``. Every refusal is logged with the peer's pid/uid/gid.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from xinfd.api.security import PermissionDeniedError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class PeerCreds:
    """The process at the other end of a Unix socket, as the kernel reports it."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()

    def __str__(self) -> str:
        return f"pid={self.pid} uid={self.uid} gid={self.gid}"


def read_peer_creds(sock: socket.socket | None) -> PeerCreds | None:
    """SO_PEERCRED of a Unix stream socket plus the peer's supplementary groups; ``None`` if unavailable."""
    if sock is None or sock.family != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCreds(pid=pid, uid=uid, gid=gid, groups=_supplementary_groups(pid))


def _supplementary_groups(pid: int) -> frozenset[int]:
    # SO_PEERCRED carries only the primary gid; /proc has the rest. A peer that already exited has none.
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


def resolve_user(name: str) -> int:
    return int(name) if name.isdigit() else pwd.getpwnam(name).pw_uid


def resolve_group(name: str) -> int:
    return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid


@dataclass(frozen=True, slots=True)
class ControlAccess:
    """The uids and gids admitted on the control socket."""

    uids: frozenset[int]
    gids: frozenset[int]

    @classmethod
    def from_settings(cls, settings: Any, *, own_uid: int | None = None) -> ControlAccess:
        uids = {0, os.getuid() if own_uid is None else own_uid}
        uids.update(_resolve(settings.control_allowed_users, resolve_user))
        groups = list(settings.control_allowed_groups)
        if settings.control_socket_group:
            groups.append(settings.control_socket_group)
        return cls(uids=frozenset(uids), gids=frozenset(_resolve(groups, resolve_group)))

    def allows(self, peer: PeerCreds) -> bool:
        return peer.uid in self.uids or peer.gid in self.gids or bool(peer.groups & self.gids)


def _resolve(names: Iterable[str], resolve: Callable[[str], int]) -> set[int]:
    result = set()
    for name in names:
        try:
            result.add(resolve(name))
        except KeyError:
            log.warning("control socket: no user or group %r (ignored)", name)
    return result


def request_peer(request: web.Request) -> PeerCreds | None:
    transport = request.transport
    return read_peer_creds(transport.get_extra_info("socket") if transport is not None else None)


def peer_middleware(access_of: Callable[[], ControlAccess]) -> Middleware:
    """Refuse peers that are not allowed (403). A non-Unix transport is admitted only from loopback: the
    daemon
    serves the control app on a Unix socket only; loopback TCP is what the unit tests' client uses."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request_peer(request)
        if peer is None:
            transport = request.transport
            sock = transport.get_extra_info("socket") if transport is not None else None
            peername = transport.get_extra_info("peername") if transport is not None else None
            loopback = (
                sock is not None
                and sock.family in (socket.AF_INET, socket.AF_INET6)
                and isinstance(peername, tuple)
                and peername[0] in ("127.0.0.1", "::1")
            )
            if not loopback:
                log.warning(
                    "control request %s %s refused: peer credentials unavailable",
                    request.method,
                    request.path,
                )
                raise PermissionDeniedError("peer credentials unavailable on the control socket")
        elif not access_of().allows(peer):
            log.warning("control request %s %s refused for peer %s", request.method, request.path, peer)
            raise PermissionDeniedError(f"uid {peer.uid} is not allowed to use the xinfd control socket")
        return await handler(request)

    return middleware


def secure_socket(path: Path, *, group: str | None) -> None:
    """Give a freshly bound control socket its final mode: 0600, or 0660 owned by ``group``.

    The socket is bound under umask 0177, so it is never more open than 0600 before this runs.
    Raises ``KeyError`` for an unknown group and ``PermissionError`` if the daemon may not use it.
    """
    if group is None:
        os.chmod(path, 0o600)
        return
    os.chown(path, -1, resolve_group(group))
    os.chmod(path, 0o660)
