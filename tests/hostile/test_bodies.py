"""Hostile bodies: JSON the parser accepts but cannot hold, lone surrogates in (streamed) prompts, and bodies
sent to a daemon that would refuse the request anyway."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest

from tests.hostile.conftest import Daemon, host_port, launch_echo, request
from tests.hostile.test_bad_names import control_post_raw

HUGE_INT = b'{"model": "echo", "max_tokens": ' + b"1" * 100_000 + b"}"
DEEP = b'{"model": "echo", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.fixture
def echo_daemon(make_daemon: Any) -> Daemon:
    daemon: Daemon = make_daemon().start()
    launch_echo(daemon)
    return daemon


def test_unholdable_json_is_400_on_both_sockets(echo_daemon: Daemon) -> None:
    for raw, words in ((HUGE_INT, b"digits"), (DEEP, b"nested too deeply")):
        status, _, body = request(echo_daemon, "POST", "/v1/chat/completions", raw=raw,
                                  headers={"Content-Type": "application/json"})
        assert status == 400 and words in body
        status, answer = control_post_raw(echo_daemon, "/v1/models", raw)
        assert status == 400 and words.decode() in answer["error"]["message"]


@pytest.mark.parametrize("prompt", [b'"a\\ud800b"', b'"a\xed\xa0\x80b"', b'"\\udfff"'], ids=["escape", "utf8", "low"])
def test_a_lone_surrogate_in_a_streamed_prompt_is_400(echo_daemon: Daemon, prompt: bytes) -> None:
    raw = b'{"model": "echo", "stream": true, "prompt": ' + prompt + b"}"
    status, _, body = request(echo_daemon, "POST", "/v1/completions", raw=raw,
                              headers={"Content-Type": "application/json"})
    answer = json.loads(body)
    assert status == 400 and answer["error"]["param"] == "prompt" and "surrogate" in answer["error"]["message"]
    chat = b'{"model": "echo", "stream": true, "messages": [{"role": "user", "content": ' + prompt + b"}]}"
    status, _, body = request(echo_daemon, "POST", "/v1/chat/completions", raw=chat,
                              headers={"Content-Type": "application/json"})
    assert status == 400 and json.loads(body)["error"]["param"] == "messages[0].content"
    replica_log = (echo_daemon.home / "logs" / "echo-r0.log").read_text(errors="replace")
    assert "Traceback" not in replica_log and "Traceback" not in echo_daemon.log()
    # A surrogate *pair* is valid Unicode and is served.
    status, _, body = request(echo_daemon, "POST", "/v1/completions",
                              raw=b'{"model": "echo", "prompt": "\\ud83d\\ude00"}',
                              headers={"Content-Type": "application/json"})
    assert status == 200 and "\U0001f600" in json.loads(body)["choices"][0]["text"]


def test_admission_is_decided_before_the_body_is_read(make_daemon: Any) -> None:
    daemon = make_daemon(env={"XINFD_REPLICA_MAX_CONCURRENCY": "1", "XINFD_MODEL_QUEUE_SIZE": "0"}).start()
    daemon.xinfctl("launch", "-n", "echo", "--delay", "0.2", timeout=120)
    busy = socket.create_connection(host_port(daemon), timeout=30)
    payload = json.dumps({"model": "echo", "prompt": " ".join(["w"] * 50), "stream": True}).encode()
    busy.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    assert busy.recv(4096).startswith(b"HTTP/1.1 200")  # the only slot is taken
    with socket.create_connection(host_port(daemon), timeout=5) as sock:
        started = time.monotonic()
        # 8 MB announced, none sent: the refusal must not wait for (or buffer) it.
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 8000000\r\n\r\n")
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 429") and b"Retry-After" in answer
        assert time.monotonic() - started < 3
    busy.close()
