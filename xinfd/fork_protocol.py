"""The messages between the daemon and a fork server (``xinfd.forkserver``); standard library only.

Both ends hold one end of a ``SOCK_SEQPACKET`` socket pair: each message is one datagram of UTF-8 JSON (no
framing to get wrong), and file descriptors travel beside it as ``SCM_RIGHTS`` (the replica's stdin and log
going to the server, the replica's pidfd coming back). The server's end is the descriptor its ``--fd`` names.

Daemon -> server: ``{"op": "spawn", "id": N, "argv": [...], "env": {...}, "cwd": "..."|null}`` with two fds
(stdin, log). Server -> daemon: ``{"ready": true, "pid": P, "preloaded": [...], "seconds": S}`` once, after the
imports (or ``{"failed": "why"}`` and exit); ``{"id": N, "pid": P}`` with the child's pidfd, or
``{"id": N, "error": "why"}``; ``{"exit": P, "status": S}`` (``S`` negative: killed by signal ``-S``) for each
child it reaps.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
from typing import Any

# Large enough for a replica's whole environment, its worker context included (a model spec is a few KiB), and
# above the default socket send buffer (208 KiB), which bounds one datagram anyway (larger: EMSGSIZE, exec'd).
MAX_MESSAGE = 256 << 10
MAX_FDS = 4


def send(sock: socket.socket, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
    """Send one message (and ``fds``); raises ``OSError`` (``EMSGSIZE``, ``EAGAIN``, ...) as the socket does."""
    data = json.dumps(message, separators=(",", ":")).encode()
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sock.sendmsg([data], ancillary)


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """One message and the fds beside it; ``None`` at end of stream. Raises ``BlockingIOError`` when empty.

    Received fds are the caller's to close, also when the message is unusable (``ValueError``).
    """
    data, ancillary, _flags, _addr = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * 4))
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(array.array("i", payload[:usable]))
    if not data:
        for fd in fds:
            _close_quietly(fd)
        return None
    try:
        message = json.loads(data)
    except ValueError:
        for fd in fds:
            _close_quietly(fd)
        raise
    if not isinstance(message, dict):
        for fd in fds:
            _close_quietly(fd)
        raise ValueError("a fork-server message must be a JSON object")
    return message, fds


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
