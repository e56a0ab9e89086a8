"""Clients that connect and send nothing, or trickle: they must cost a bounded number of descriptors, be cut
after the head deadline, and never stop ``/health``, ``xinfctl list`` or a launch."""

from __future__ import annotations

import json
import socket
import time
from contextlib import ExitStack, suppress
from typing import Any

from tests.hostile.conftest import Daemon, host_port, launch_echo, request, start_with_fd_limit, wait_for

ATTACKER = "127.0.0.2"  # another loopback address: a different client than the one checking /health


def _silent(daemon: Daemon, stack: ExitStack, count: int, source: str = ATTACKER) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.bind((source, 0))
        sock.connect(host_port(daemon))
        sockets.append(sock)
    return sockets


def _silent_control(daemon: Daemon, stack: ExitStack, count: int) -> None:
    for _ in range(count):
        sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        sock.connect(str(daemon.socket))


def test_hundreds_of_silent_connections_do_not_stop_the_daemon(make_daemon: Any) -> None:
    # 384 descriptors: without caps, 360 + 30 idle connections and a launch run the daemon out of them. With
    # them, each socket takes (384 - 256 reserved) / 2 = 64 connections, and one client 40 of those.
    daemon = make_daemon(env={"XINFD_MAX_CONNECTIONS_PER_PEER": "40", "XINFD_REQUEST_HEAD_TIMEOUT": "120",
                              "XINFD_KEEPALIVE_TIMEOUT": "120"})
    start_with_fd_limit(daemon, 384)
    with ExitStack() as stack:
        held = _silent(daemon, stack, 360)
        _silent_control(daemon, stack, 30)  # under the per-user cap: xinfctl runs as the same user
        time.sleep(0.5)
        status, _, body = request(daemon, "GET", "/health", timeout=10)
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert daemon.xinfctl_json("list") == []
        launch_echo(daemon)
        status, _, body = request(daemon, "POST", "/v1/completions", {"model": "echo", "prompt": "still here"})
        assert status == 200 and b"still here" in body
        # The attacker's connections over its cap were answered 503 and closed, not left to hang.
        refused = 0
        for sock in held:
            sock.settimeout(0.01)
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            refused += data.startswith(b"HTTP/1.1 503")
        assert refused >= 200
    assert "Too many open files" not in daemon.log()


def test_the_connection_over_the_per_client_cap_gets_503(make_daemon: Any) -> None:
    daemon = make_daemon(env={"XINFD_MAX_CONNECTIONS_PER_PEER": "5", "XINFD_REQUEST_HEAD_TIMEOUT": "60"}).start()
    with ExitStack() as stack:
        _silent(daemon, stack, 5)
        answer = raw_exchange_from(daemon, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", ATTACKER)
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer
        assert b'"code": "too_many_connections"' in answer
        status, _, _ = request(daemon, "GET", "/health")  # another client is served
        assert status == 200


def raw_exchange_from(daemon: Daemon, payload: bytes, source: str) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(host_port(daemon))
        sock.sendall(payload)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_silent_and_trickling_connections_are_cut_after_the_head_deadline(make_daemon: Any) -> None:
    daemon = make_daemon(env={"XINFD_REQUEST_HEAD_TIMEOUT": "1"}).start()
    with ExitStack() as stack:
        (silent,) = _silent(daemon, stack, 1, "127.0.0.1")
        (trickle,) = _silent(daemon, stack, 1, "127.0.0.1")
        started = time.monotonic()
        trickle.sendall(b"GET /health HTTP/1.1\r\n")
        silent.settimeout(5)
        assert silent.recv(1) == b""  # closed by the daemon
        for byte in b"X-Slow: 1":
            try:
                trickle.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.2)
        trickle.settimeout(5)
        with suppress(ConnectionResetError):  # closed or reset: either way the daemon let go of it
            assert trickle.recv(1) == b""
        assert time.monotonic() - started < 4


def test_control_socket_connections_are_cut_after_the_head_deadline(make_daemon: Any) -> None:
    daemon = make_daemon(env={"XINFD_REQUEST_HEAD_TIMEOUT": "1"}).start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(daemon.socket))
        sock.settimeout(5)
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert time.monotonic() - started < 4


def test_an_idle_keepalive_connection_is_closed(make_daemon: Any) -> None:
    daemon = make_daemon(env={"XINFD_KEEPALIVE_TIMEOUT": "1"}).start()
    with socket.create_connection(host_port(daemon), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        wait_for(lambda: sock.recv(65536) == b"", timeout=5)


def test_a_trickled_body_is_408(make_daemon: Any) -> None:
    daemon = make_daemon(env={"XINFD_REQUEST_BODY_TIMEOUT": "1"}).start()
    with socket.create_connection(host_port(daemon), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"model\":")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer
