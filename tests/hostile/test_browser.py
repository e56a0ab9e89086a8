"""A web page the operator opens attacks a keyless daemon: DNS rebinding (a foreign Host), cross-origin
"simple" POSTs (text/plain), and preflights."""

from __future__ import annotations

from typing import Any

import pytest

from tests.hostile.conftest import Daemon, host_port, launch_echo, request

BODY = b'{"model": "echo", "prompt": "from a web page"}'


@pytest.fixture
def echo_daemon(make_daemon: Any) -> Daemon:
    daemon: Daemon = make_daemon().start()
    launch_echo(daemon)
    return daemon


def test_a_foreign_host_is_refused_and_own_names_are_served(echo_daemon: Daemon) -> None:
    _, port = host_port(echo_daemon)
    status, _, body = request(echo_daemon, "GET", "/v1/models", headers={"Host": f"evil.example:{port}"})
    assert status == 421 and b"unknown_host" in body and b"allowed_hosts" in body
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        status, _, _ = request(echo_daemon, "GET", "/v1/models", headers={"Host": host})
        assert status == 200, host


def test_a_cross_origin_text_plain_post_runs_nothing(echo_daemon: Daemon) -> None:
    _, port = host_port(echo_daemon)
    status, _, body = request(echo_daemon, "POST", "/v1/completions", raw=BODY,
                              headers={"Content-Type": "text/plain", "Origin": "https://evil.example"})
    assert status == 403 and b"origin_not_allowed" in body
    # Even without an Origin header (an old browser, a form), a body that is not JSON is refused.
    status, _, body = request(echo_daemon, "POST", "/v1/completions", raw=BODY, headers={"Content-Type": "text/plain"})
    assert status == 415 and b"application/json" in body
    status, _, _ = request(echo_daemon, "POST", "/v1/completions", raw=BODY,
                           headers={"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{port}"})
    assert status == 200  # same origin


def test_listed_origins_get_cors_and_preflights(make_daemon: Any) -> None:
    daemon = make_daemon(env={"XINFD_CORS_ALLOWED_ORIGINS": "https://app.example"}).start()
    launch_echo(daemon)
    status, headers, _ = request(daemon, "OPTIONS", "/v1/completions", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "https://app.example"
    status, headers, _ = request(daemon, "POST", "/v1/completions", raw=BODY,
                                 headers={"Content-Type": "application/json", "Origin": "https://app.example"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://app.example"
    status, _, _ = request(daemon, "OPTIONS", "/v1/completions", headers={
        "Origin": "https://other.example", "Access-Control-Request-Method": "POST"})
    assert status == 403


def test_configured_host_names_are_served(make_daemon: Any) -> None:
    daemon = make_daemon(env={"XINFD_ALLOWED_HOSTS": "xinfd.internal,*.corp.example"}).start()
    for host, expected in (("xinfd.internal:1", 200), ("a.corp.example", 200), ("corp.example.evil", 421)):
        status, _, _ = request(daemon, "GET", "/health", headers={"Host": host})
        assert status == expected, host
