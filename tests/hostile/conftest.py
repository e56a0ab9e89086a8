"""The hostile-input suite: the real daemon (``tests/integration/conftest.py``) attacked one class at a time.

Each module is one attack class; every test names what an attacker or a careless client did and what the
daemon must do instead. The whole suite stays under three minutes on a 2-core machine: one echo model at
most per test, raw sockets for connection floods, short deadlines set through settings.
"""

from __future__ import annotations

import http.client
import json
import resource
import socket
import subprocess
import sys
import time
from typing import Any

from tests.integration.conftest import Daemon, daemon_env, make_daemon, pid_alive, wait_for  # noqa: F401
from tests.integration.conftest import daemon as daemon  # the fixture, re-exported for this suite


def host_port(target: Daemon) -> tuple[str, int]:
    host, port = target.endpoint.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def request(
    daemon: Daemon, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
    raw: bytes | None = None, timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to the front end with exactly the given headers (plus Host unless given)."""
    host, port = host_port(daemon)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    all_headers = {"Content-Type": "application/json"} if body is not None else {}
    all_headers.update(headers or {})
    skip_host = "Host" in all_headers
    try:
        conn.putrequest(method, path, skip_host=skip_host, skip_accept_encoding=True)
        for key, value in all_headers.items():
            conn.putheader(key, value)
        if data is not None:
            conn.putheader("Content-Length", str(len(data)))
        conn.endheaders(data)
        response = conn.getresponse()
        return response.status, dict(response.headers), response.read()
    finally:
        conn.close()


def raw_exchange(daemon: Daemon, payload: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes to the front end and read until the daemon closes the connection."""
    sock = socket.create_connection(host_port(daemon), timeout=timeout)
    try:
        sock.sendall(payload)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received
    finally:
        sock.close()


def launch_echo(daemon: Daemon, *args: str) -> None:
    daemon.xinfctl("launch", "-n", "echo", *args, timeout=120)


def start_with_fd_limit(daemon: Daemon, nofile: int) -> Daemon:
    """``Daemon.start`` with the daemon's descriptor limit (soft and hard) set to ``nofile`` from its first
    instruction, as a small container or a systemd ``LimitNOFILE=`` would."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    daemon.log_path = daemon.home / f"daemon-{time.monotonic_ns()}.log"
    with daemon.log_path.open("wb") as sink:
        daemon.proc = subprocess.Popen(
            [sys.executable, "-m", "xinfd.daemon", "--port", "0"],
            env=daemon.env, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=limit,
        )

    def up() -> bool:
        assert daemon.proc is not None
        if daemon.proc.poll() is not None:
            raise AssertionError(f"xinfd exited with {daemon.proc.returncode}:\n{daemon.log()}")
        return daemon.socket.exists() and daemon.xinfctl("status", check=False).returncode == 0

    wait_for(up, timeout=30)
    daemon.endpoint = daemon.xinfctl_json("status")["endpoint"]
    return daemon
