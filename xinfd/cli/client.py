"""The control-API clients of xinfctl: HTTP+JSON over the daemon's Unix socket, or over TCP to a remote daemon's
front end, whose ``/control`` mount serves the same routes to admin keys (``XINFD_ADMIN_API_KEYS``).

The standard library keeps ``xinfctl`` fast to start (no aiohttp import) and dependency-free for scripts.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
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

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        return _UnixConnection(str(self.socket_path), timeout)

    def _headers(self) -> dict[str, str]:
        return {}

    def _path(self, path: str) -> str:
        return path

    def _send(self, method: str, path: str, body: Any = None, timeout: float | None = None,
              *, blocking: bool = False) -> http.client.HTTPResponse:
        # blocking: no read timeout at all (a launch can be silent for minutes while a model loads).
        conn = self._connection(None if blocking else timeout if timeout is not None else self.timeout)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        headers.update(self._headers())
        try:
            conn.request(method, self._path(path), body=data, headers=headers)
            return conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError):
            raise CliError(f"xinfd is not running (no daemon on {self.where})") from None
        except PermissionError:
            raise CliError(f"permission denied on {self.where}") from None
        except TimeoutError:
            raise CliError(f"xinfd did not answer within {conn.timeout}s on {self.where}") from None
        except OSError as exc:  # DNS failure, unreachable host, TLS error (remote endpoints)
            raise CliError(f"cannot reach xinfd on {self.where}: {exc}") from None

    @property
    def where(self) -> str:
        return f"control socket {self.socket_path}"

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


class RemoteControlClient(ControlClient):
    """The same client over HTTP(S) to a remote daemon's front end: ``<endpoint>/control/...`` with an admin key.

    Same routes, same answers, so every command prints the same and exits the same as over the socket.
    """

    def __init__(self, endpoint: str, api_key: str | None, timeout: float | None = 30.0) -> None:
        super().__init__(Path(), timeout)
        parts = urllib.parse.urlsplit(endpoint)
        self.endpoint = endpoint.rstrip("/")
        self._https = parts.scheme == "https"
        self._netloc = parts.netloc
        self._base = parts.path.rstrip("/") + CONTROL_PREFIX
        self._key = api_key

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._netloc, timeout=timeout)
        return http.client.HTTPConnection(self._netloc, timeout=timeout)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"} if self._key else {}

    def _path(self, path: str) -> str:
        return self._base + path

    @property
    def where(self) -> str:
        return self.endpoint


# Where the front end serves the control routes (the daemon's ``xinfd.api.control.CONTROL_PREFIX``; xinfctl
# does not import the daemon, tests/unit/cli/test_remote.py keeps the two equal).
CONTROL_PREFIX = "/control"


def _decode(status: int, payload: bytes) -> Any:
    try:
        data = json.loads(payload) if payload else None
    except json.JSONDecodeError:
        raise CliError(f"bad reply from xinfd (HTTP {status}): {payload[:200]!r}") from None
    if status >= 400:
        err = (data or {}).get("error", {}) if isinstance(data, dict) else {}
        message = err.get("message") or f"HTTP {status}"
        if status in (401, 403):  # a missing or wrong key, a refused address or peer: not a usage error
            raise CliError(f"unauthorized: {message}", EXIT_FAILURE)
        # Validation problems are the user's to fix: exit 2 like any usage error.
        raise CliError(message, exit_code_for(status))
    return data


def default_socket(env: Mapping[str, str] = os.environ) -> Path:
    if env.get("XINFD_CONTROL_SOCKET"):
        return Path(env["XINFD_CONTROL_SOCKET"])
    home = Path(env["XINFERENCE_HOME"]) if env.get("XINFERENCE_HOME") else Path.home() / ".xinference"
    return home / "xinfd.sock"


ADMIN_KEY_ENV_VAR = "XINFD_ADMIN_API_KEY"


def read_key_file(path: Path) -> str:
    """The admin key from ``--api-key-file``: the file's first line (a missing file is a usage error)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise CliError(f"cannot read the API key file {path}: {exc.strerror or exc}", EXIT_USAGE) from None
    key = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not key:
        raise CliError(f"the API key file {path} is empty", EXIT_USAGE)
    return key


def admin_key(key_file: Path | None, env: Mapping[str, str] = os.environ) -> str | None:
    """``--api-key-file``, else ``$XINFD_ADMIN_API_KEY``, else none (the daemon then answers unauthorized)."""
    if key_file is not None:
        return read_key_file(key_file)
    return env.get(ADMIN_KEY_ENV_VAR) or None
