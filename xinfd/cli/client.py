"""The control-socket client of xinfctl: HTTP+JSON over a Unix socket with the standard library only.

The standard library keeps ``xinfctl`` fast to start (no aiohttp import) and dependency-free for scripts.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

EXIT_FAILURE = 1
EXIT_USAGE = 2


def exit_code_for(status: int) -> int:
    """Refused input (4xx) is the user's to fix: exit 2; busy (409) or failed: exit 1."""
    return EXIT_USAGE if 400 <= status < 500 and status != 409 else EXIT_FAILURE


def exit_code_for_event(event: Mapping[str, Any]) -> int:
    """The exit code of a long operation's final ``error`` event, from its ``status``: a launch refused for
    its input during the launch (a bad venv package, an unknown repository) exits 2 like a refusal up front."""
    status = event.get("status")
    return exit_code_for(status if isinstance(status, int) else 500)


class CliError(Exception):
    """A failure to report as one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("xinfd", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class ControlClient:
    """Minimal HTTP+JSON client for the control socket (stdlib only, so ``xinfctl`` starts fast)."""

    def __init__(self, socket_path: Path, timeout: float | None = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _send(self, method: str, path: str, body: Any = None, timeout: float | None = None,
              *, blocking: bool = False) -> http.client.HTTPResponse:
        # blocking: no read timeout at all (a launch can be silent for minutes while a model loads).
        conn = _UnixConnection(str(self.socket_path),
                               None if blocking else timeout if timeout is not None else self.timeout)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            conn.request(method, path, body=data, headers=headers)
            return conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError):
            raise CliError(f"xinfd is not running (no daemon on control socket {self.socket_path})") from None
        except PermissionError:
            raise CliError(f"permission denied on control socket {self.socket_path}") from None
        except TimeoutError:
            raise CliError(f"xinfd did not answer within {conn.timeout}s on {self.socket_path}") from None

    def call(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        response = self._send(method, path, body, timeout)
        payload = response.read()
        return _decode(response.status, payload)

    def open_raw(self, method: str, path: str) -> http.client.HTTPResponse:
        """A response to read incrementally (``xinfctl logs --follow``); errors raised like ``call``."""
        response = self._send(method, path, timeout=None)
        if response.status >= 400:
            _decode(response.status, response.read())
        return response

    def stream(self, method: str, path: str, body: Any = None) -> Iterator[dict[str, Any]]:
        """NDJSON events of a long operation (launch); the socket has no read timeout while it runs."""
        response = self._send(method, path, body, blocking=True)
        if response.status >= 400:
            _decode(response.status, response.read())
        while line := response.readline():
            if line.strip():
                yield json.loads(line)


def _decode(status: int, payload: bytes) -> Any:
    try:
        data = json.loads(payload) if payload else None
    except json.JSONDecodeError:
        raise CliError(f"bad reply from xinfd (HTTP {status}): {payload[:200]!r}") from None
    if status >= 400:
        err = (data or {}).get("error", {}) if isinstance(data, dict) else {}
        message = err.get("message") or f"HTTP {status}"
        # Validation problems are the user's to fix: exit 2 like any usage error.
        raise CliError(message, exit_code_for(status))
    return data


def default_socket(env: Mapping[str, str] = os.environ) -> Path:
    if env.get("XINFD_CONTROL_SOCKET"):
        return Path(env["XINFD_CONTROL_SOCKET"])
    home = Path(env["XINFERENCE_HOME"]) if env.get("XINFERENCE_HOME") else Path.home() / ".xinference"
    return home / "xinfd.sock"
