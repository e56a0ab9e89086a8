"""Front end and operations end to end: keepalive pings, validation, drain, reload, logs, chat.

Each test runs a real daemon with real echo worker processes; requests go over loopback TCP.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Daemon, wait_for
from tests.integration.test_daemon import launch_echo, post


def open_stream(daemon: Daemon, path: str, body: Any, headers: dict[str, str] | None = None) -> socket.socket:
    """Send a request on a raw socket, so the test sees every byte (pings included) as it arrives."""
    host, port = daemon.endpoint.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    conn = socket.create_connection((host, int(port)), timeout=30)
    conn.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
        + data
    )
    return conn


def dechunk(body: bytes) -> bytes:
    """The payload of a chunked HTTP/1.1 body."""
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


def read_all(conn: socket.socket) -> list[tuple[float, bytes]]:
    """Every chunk received until the server closes, with its arrival time."""
    chunks = []
    with conn:
        while chunk := conn.recv(65536):
            chunks.append((time.monotonic(), chunk))
    return chunks


def test_silent_prefill_is_kept_alive_with_pings(make_daemon: Any) -> None:
    daemon = make_daemon(env={"XINFERENCE_SSE_PING_ATTEMPTS_SECONDS": "1"}).start()
    launch_echo(daemon, "--prefill-delay", "3", replicas=1)
    started = time.monotonic()
    conn = open_stream(
        daemon,
        "/v1/chat/completions",
        {"model": "echo", "messages": [{"role": "user", "content": "after a long think"}], "stream": True},
    )
    chunks = read_all(conn)
    raw = b"".join(c for _, c in chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
    body = dechunk(body)
    first_data = body.index(b"data: ")
    pings_before = body[:first_data].count(b": ping\n\n")
    assert pings_before >= 2, body[:first_data]  # 3 s of silence at a 1 s interval
    assert body.rstrip().endswith(b"data: [DONE]")
    # The pings arrived during the silence, not all at once with the answer.
    ping_times = [t for t, c in chunks if b": ping" in c]
    assert ping_times and ping_times[0] - started < 2.5


def test_a_stream_waiting_in_the_queue_is_pinged(make_daemon: Any) -> None:
    # One request at a time per replica: the second stream waits in the model's queue, silently.
    daemon = make_daemon(
        env={"XINFERENCE_SSE_PING_ATTEMPTS_SECONDS": "1", "XINFD_REPLICA_MAX_CONCURRENCY": "1"}
    ).start()
    launch_echo(daemon, "--delay", "0.1", replicas=1)
    words = " ".join(f"w{i}" for i in range(30))  # 3 s
    first = open_stream(daemon, "/v1/completions", {"model": "echo", "prompt": words, "stream": True})
    received = b""
    while b"data: " not in received:
        received += first.recv(4096)
    second = open_stream(daemon, "/v1/completions", {"model": "echo", "prompt": "queued", "stream": True})
    body = dechunk(b"".join(c for _, c in read_all(second)).partition(b"\r\n\r\n")[2])
    assert body[: body.index(b"data: ")].count(b": ping\n\n") >= 2, body
    assert body.rstrip().endswith(b"data: [DONE]")
    read_all(first)


BAD_BODIES: list[tuple[str, Any, str | None]] = [
    ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": "abc"}, "max_tokens"),
    ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "max_tokens"),
    ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1e12}, "max_tokens"),
    ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
    ("chat/completions", {"messages": []}, "messages"),
    ("chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ("completions", {"prompt": "x", "temperature": "NaN"}, "temperature"),
    ("completions", {"prompt": 7}, "prompt"),
    ("embeddings", {"input": []}, "input"),
]


def test_validation_limits_and_malformed_bodies(make_daemon: Any) -> None:
    daemon = make_daemon(env={"XINFERENCE_MAX_TOKENS": "3"}).start()
    launch_echo(daemon, replicas=1)
    for endpoint, body, param in BAD_BODIES:
        status, _, raw = post(daemon.endpoint, f"/v1/{endpoint}", {"model": "echo", **body})
        error = json.loads(raw)["error"]
        assert (status, error["param"]) == (400, param), (endpoint, body, raw)
    # NaN is not JSON, but Python clients send it: refused by name too.
    status, raw = _raw_post(daemon, b'{"model": "echo", "prompt": "x", "temperature": NaN}')
    assert status == 400 and json.loads(raw)["error"]["param"] == "temperature"
    for bad in (b"{not json", b'{"model": "\xff\xfe"}', b"[" * 10_000 + b"]" * 10_000, b"[1, 2]"):
        status, raw = _raw_post(daemon, bad)
        assert status == 400 and json.loads(raw)["error"]["code"] == "invalid_request", raw[:200]
    status, raw = _raw_post(daemon, b'{"model": "echo", "prompt": "' + b"a" * (9 * 1024 * 1024) + b'"}')
    assert status == 413
    # A prompt longer than the context: the worker counts tokens and says how many.
    status, _, raw = post(daemon.endpoint, "/v1/completions", {"model": "echo", "prompt": "w " * 5000})
    assert status == 400 and re.search(r"5000 tokens", json.loads(raw)["error"]["message"]), raw
    # XINFERENCE_MAX_TOKENS caps what a client may ask for.
    status, _, raw = post(
        daemon.endpoint,
        "/v1/completions",
        {"model": "echo", "prompt": "one two three four five six", "max_tokens": 100},
    )
    assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] == 3
    # And the daemon is unharmed.
    status, _, raw = post(daemon.endpoint, "/v1/completions", {"model": "echo", "prompt": "still here"})
    assert status == 200 and json.loads(raw)["choices"][0]["text"] == "still here"


def _raw_post(daemon: Daemon, data: bytes) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{daemon.endpoint}/v1/completions", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def test_sigterm_drains_running_streams_and_refuses_new_ones(make_daemon: Any) -> None:
    daemon = make_daemon(env={"XINFD_DRAIN_TIMEOUT": "20"}).start()
    launch_echo(daemon, "--delay", "0.1", replicas=1)
    words = " ".join(f"w{i}" for i in range(30))  # 3 s of streaming
    conn = open_stream(daemon, "/v1/completions", {"model": "echo", "prompt": words, "stream": True})
    received = b""
    while received.count(b"data: ") < 2:
        received += conn.recv(4096)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    # New work is refused while the running stream goes on.
    _, _, raw = wait_for(lambda: _503(daemon), timeout=5)
    assert json.loads(raw)["error"]["code"] == "shutting_down"
    with conn:
        while chunk := conn.recv(65536):
            received += chunk
    received = dechunk(received.partition(b"\r\n\r\n")[2])
    assert received.rstrip().endswith(b"data: [DONE]")
    text = "".join(json.loads(e)["choices"][0]["text"] for e in re.findall(rb"data: (\{.*\})", received))
    assert text == words
    assert daemon.proc.wait(timeout=30) == 0
    assert "drained: no request in flight" in daemon.log()


def _503(daemon: Daemon) -> Any:
    status, headers, raw = post(daemon.endpoint, "/v1/completions", {"model": "echo", "prompt": "late"})
    return (status, headers, raw) if status == 503 else None


def test_sighup_reloads_keys_and_logs_what_changed(make_daemon: Any, tmp_path: Path) -> None:
    config = tmp_path / "xinfd.toml"
    config.write_text('log_level = "INFO"\n')
    daemon = make_daemon().start("--config", str(config))
    assert post(daemon.endpoint, "/v1/completions", {"model": "nope", "prompt": "x"})[0] == 404
    config.write_text('log_level = "INFO"\napi_keys = ["sk-reloaded"]\nhost = "127.0.0.2"\n')
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in daemon.log(), timeout=10)
    assert post(daemon.endpoint, "/v1/completions", {"model": "nope", "prompt": "x"})[0] == 401
    assert "SIGHUP: api_keys = 1 key(s)" in daemon.log()
    assert re.search(r"SIGHUP: host changed but needs a restart", daemon.log())
    assert "sk-reloaded" not in daemon.log()
    # The running daemon's configuration, as --print-config prints it, shows the new value (masked).
    shown = daemon.xinfctl("config").stdout
    assert 'api_keys = ["***"]' in shown and f"from: file {config}" in shown


def test_logs_command_and_follow(daemon: Daemon) -> None:
    launch_echo(daemon, replicas=1)
    post(daemon.endpoint, "/v1/completions", {"model": "echo", "prompt": "log me"})
    out = daemon.xinfctl("logs", "echo", "--lines", "50").stdout
    assert "completion" in out or "ready" in out.lower(), out
    import subprocess
    import sys

    follower = subprocess.Popen(
        [sys.executable, "-m", "xinfd.cli", "logs", "echo", "-n", "0", "--follow"],
        env=daemon.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        post(daemon.endpoint, "/v1/completions", {"model": "echo", "prompt": "followed request"})
        assert follower.stdout is not None
        line = _readline_with_timeout(follower.stdout, 10)
        assert line, "no line followed"
    finally:
        follower.terminate()
        follower.wait(timeout=10)
        if follower.stdout is not None:
            follower.stdout.close()
    bad = daemon.xinfctl("logs", "../../etc/passwd", check=False)
    assert bad.returncode == 2 and "invalid model uid" in bad.stderr
    missing = daemon.xinfctl("logs", "ghost", check=False)
    assert missing.returncode == 2 and "no log for model" in missing.stderr


def _readline_with_timeout(stream: Any, timeout: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0] if result else ""


def test_chat_command_streams_the_answer(make_daemon: Any) -> None:
    daemon = make_daemon(env={"XINFD_API_KEYS": "sk-chat"}).start()
    launch_echo(daemon, replicas=1)
    env = {**daemon.env, "XINFERENCE_ENDPOINT": daemon.endpoint, "XINFD_API_KEY": "sk-chat"}
    daemon.env = env
    result = daemon.xinfctl("chat", "echo", "hello from the terminal")
    assert result.stdout.strip() == "hello from the terminal"
    daemon.env = {**env, "XINFD_API_KEY": "sk-wrong"}
    refused = daemon.xinfctl("chat", "echo", "x", check=False)
    assert refused.returncode == 1 and "API key" in refused.stderr
    daemon.env = env
    unknown = daemon.xinfctl("chat", "ghost", "x", check=False)
    assert unknown.returncode == 2 and "ghost" in unknown.stderr


@pytest.fixture
def cleanup() -> Any:
    paths: list[Path] = []
    yield paths
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def test_control_socket_is_private_and_checks_peer_credentials(make_daemon: Any, cleanup: list[Path]) -> None:
    # The socket lives in a directory others may traverse (pytest's tmp dirs are 0700).
    public = Path(tempfile.mkdtemp(prefix="xinfd-peer-"))
    public.chmod(0o755)
    cleanup.append(public)
    sock_path = public / "xinfd.sock"
    daemon = make_daemon(env={"XINFD_CONTROL_SOCKET": str(sock_path)})
    daemon.socket = sock_path
    daemon.start()
    mode = stat.S_IMODE(os.stat(daemon.socket).st_mode)
    assert mode == 0o600
    if os.getuid() != 0:
        pytest.skip("switching to another uid to test SO_PEERCRED needs root")
    # Loosen the mode by hand (as a careless admin might): the peer-credential check still refuses nobody.
    os.chmod(daemon.socket, 0o666)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(read)
        try:
            os.setgid(65534)
            os.setuid(65534)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(daemon.socket))
            sock.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
            os.write(write, reply[:200])
        except BaseException as exc:
            os.write(write, f"child failed: {exc!r}".encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as fh:
        reply = fh.read()
    assert reply.startswith(b"HTTP/1.1 403"), reply
    assert "refused for peer" in daemon.log() and "uid=65534" in daemon.log()
    assert daemon.xinfctl("status").returncode == 0  # the owner still gets in


def test_control_socket_group_mode_and_a_missing_group(make_daemon: Any) -> None:
    daemon = make_daemon(env={"XINFD_CONTROL_SOCKET_GROUP": str(os.getgid())}).start()
    info = os.stat(daemon.socket)
    assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == os.getgid()
    broken = make_daemon("other", env={"XINFD_CONTROL_SOCKET_GROUP": "no-such-group-xinfd"})
    broken.start(wait=False)
    assert broken.proc is not None and broken.proc.wait(timeout=30) == 1
    assert "group 'no-such-group-xinfd': no such group" in broken.log()
