"""The walking skeleton end to end: real daemon, real echo worker processes, xinfctl and HTTP clients."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Daemon, pid_alive, wait_for


def post(endpoint: str, path: str, body: Any, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        f"{endpoint}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def sse_events(raw: bytes) -> list[str]:
    return [line[len("data: ") :] for line in raw.decode().splitlines() if line.startswith("data: ")]


def served_while_busy(daemon: Daemon, uid: str = "echo") -> set[str]:
    """The replicas that serve ``len(replicas)`` concurrent requests: each replica is stopped (SIGSTOP) so its
    request stays in flight, and each request is sent once the previous one is admitted, so least-outstanding
    routing must give every replica one. Deterministic, unlike racing idle requests."""
    def replicas() -> list[dict[str, Any]]:
        return [r for m in daemon.xinfctl_json("list") if m["model_uid"] == uid for r in m["replicas"]]

    pids = [r["pid"] for r in replicas()]
    body = {"model": uid, "messages": [{"role": "user", "content": "busy"}]}
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(len(pids)) as pool:
            futures = []
            for n in range(1, len(pids) + 1):
                futures.append(pool.submit(post, daemon.endpoint, "/v1/chat/completions", body))
                wait_for(lambda n=n: sum(r["outstanding"] for r in replicas()) == n)
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
            answers = [f.result() for f in futures]
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert [status for status, _, _ in answers] == [200] * len(pids)
    return {headers["X-Xinfd-Replica"] for _, headers, _ in answers}


def launch_echo(daemon: Daemon, *extra: str, replicas: int = 2) -> dict[str, Any]:
    result = daemon.xinfctl("launch", "-n", "echo", "-r", str(replicas), *extra, "--json")
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def test_launch_two_replicas_serve_plain_and_streaming_requests(daemon: Daemon) -> None:
    model = launch_echo(daemon)
    assert model["model_uid"] == "echo"
    assert [r["state"] for r in model["replicas"]] == ["READY", "READY"]

    listed = daemon.xinfctl_json("list")
    assert listed[0]["model_name"] == "echo" and listed[0]["model_engine"] == "echo"
    pids = [r["pid"] for r in listed[0]["replicas"]]
    assert len(set(pids)) == 2 and all(pid_alive(p) for p in pids)
    # Each replica is the leader of its own process group.
    assert all(os.getpgid(p) == p for p in pids)

    served_by: Counter[str] = Counter()
    for i in range(8):
        status, headers, body = post(
            daemon.endpoint,
            "/v1/chat/completions",
            {
                "model": "echo",
                "messages": [{"role": "user", "content": f"hello number {i}"}],
            },
        )
        assert status == 200, body
        answer = json.loads(body)
        assert answer["choices"][0]["message"]["content"] == f"hello number {i}"
        assert answer["usage"]["completion_tokens"] == 3
        served_by[headers["X-Xinfd-Replica"]] += 1
    # Idle replicas tie, and ties go to the replica that served last (warm caches and threads on a CPU).
    assert len(served_by) == 1, served_by
    assert served_while_busy(daemon) == {"echo-r0", "echo-r1"}

    status, headers, raw = post(
        daemon.endpoint,
        "/v1/completions",
        {
            "model": "echo",
            "prompt": "one two three four",
            "stream": True,
        },
    )
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1] if json.loads(e).get("choices"))
    assert text == "one two three four"

    status, _, body = post(
        daemon.endpoint, "/v1/completions", {"model": "echo", "prompt": "a b c d", "max_tokens": 2}
    )
    assert json.loads(body)["choices"][0]["finish_reason"] == "length"

    with urllib.request.urlopen(f"{daemon.endpoint}/v1/models") as response:
        assert [m["id"] for m in json.loads(response.read())["data"]] == ["echo"]


def test_openai_sdk_talks_to_the_daemon(daemon: Daemon) -> None:
    openai = pytest.importorskip("openai")
    launch_echo(daemon, replicas=1)
    client = openai.OpenAI(base_url=f"{daemon.endpoint}/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["echo"]
    reply = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi there"}])
    assert reply.choices[0].message.content == "hi there"
    chunks = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "streamed words here"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "streamed words here"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_terminate_leaves_no_child_process(daemon: Daemon) -> None:
    launch_echo(daemon, "--fork-grandchild", "true")
    pids = daemon.replica_pids()
    grandchildren = [int(p) for pid in pids for p in _children(pid)]
    assert grandchildren, "the echo worker should have forked a grandchild"
    out = daemon.xinfctl("terminate", "echo")
    assert "terminated echo" in out.stdout
    for pid in pids + grandchildren:
        wait_for(lambda p=pid: not pid_alive(p), timeout=10)
    assert daemon.xinfctl_json("list") == []
    assert not list((daemon.home / "run").glob("*.sock"))


def _children(pid: int) -> list[str]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return path.read_text().split() if path.exists() else []


def test_sigterm_exits_zero_with_no_orphans(daemon: Daemon) -> None:
    launch_echo(daemon, "--ignore-sigterm", "true")
    pids = daemon.replica_pids()
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    # Replicas ignoring SIGTERM are SIGKILLed after the grace period (3 s in tests), not waited on forever.
    assert time.monotonic() - started < 15
    assert not any(pid_alive(p) for p in pids)
    assert not daemon.socket.exists()
    assert "xinfd stopped" in daemon.log()


def test_second_daemon_on_same_socket_refuses(daemon: Daemon, make_daemon: Any) -> None:
    second = make_daemon("second")
    env = {**second.env, "XINFD_CONTROL_SOCKET": str(daemon.socket)}
    result = subprocess.run(
        [sys.executable, "-m", "xinfd.daemon", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert f"another xinfd is already running on control socket {daemon.socket}" in result.stderr
    assert daemon.xinfctl("status").returncode == 0  # the first one is unharmed


def test_stale_socket_from_a_crash_is_replaced(make_daemon: Any) -> None:
    d: Daemon = make_daemon()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(d.socket))
    stale.close()  # bound but nobody listening: what a SIGKILLed daemon leaves behind
    d.start()
    assert d.xinfctl_json("status")["pid"] == d.proc.pid  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("env", "args", "needle"),
    [
        ({"XINFERENCE_HEALTH_CHECK_INTERVAL": "abc"}, [], "XINFERENCE_HEALTH_CHECK_INTERVAL"),
        ({"XINFERENCE_ALLOWED_IPS": "10.0.0.0/33"}, [], "XINFERENCE_ALLOWED_IPS"),
        ({}, ["--config", "BADTOML"], "health_check_interval"),
        ({}, ["--strict", "--config", "UNKNOWNKEY"], "helth_check_interval"),
        ({}, ["--port", "99999"], "--port"),
    ],
)
def test_bad_config_exits_2_naming_the_key(
    make_daemon: Any, env: dict[str, str], args: list[str], needle: str
) -> None:
    d: Daemon = make_daemon(env=env)
    if "BADTOML" in args or "UNKNOWNKEY" in args:
        bad = d.home / "bad.toml"
        # A bad value is always fatal; a key that is not a setting only with --strict (else a warning).
        bad.write_text('health_check_interval = "soon"\n' if "BADTOML" in args else "helth_check_interval = 3\n")
        args = [str(bad) if a in ("BADTOML", "UNKNOWNKEY") else a for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "xinfd.daemon", *args], env=d.env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not d.socket.exists()


def test_print_config_shows_sources(make_daemon: Any) -> None:
    d: Daemon = make_daemon(env={"XINFERENCE_MAX_TOKENS": "64"})
    result = subprocess.run(
        [sys.executable, "-m", "xinfd.daemon", "--print-config", "-p", "8123"],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    assert "max_tokens = 64" in result.stdout and "env XINFERENCE_MAX_TOKENS" in result.stdout
    assert "port = 8123" in result.stdout and "flag --port" in result.stdout


def test_engines_and_status(daemon: Daemon) -> None:
    engines = {e["name"]: e for e in daemon.xinfctl_json("engines")}
    assert engines["echo"]["available"] is True
    assert engines["vllm"]["available"] is False and "NVIDIA GPU" in engines["vllm"]["reason"]
    table = daemon.xinfctl("engines").stdout
    assert table.splitlines()[0].split() == ["ENGINE", "AVAILABLE", "REASON"]
    status = daemon.xinfctl_json("status")
    assert status["endpoint"] == daemon.endpoint and "echo" in status["engines"]
    # The daemon runs without TLS in its process (xinfd.without_tls): no OpenSSL TLS library is mapped.
    maps = Path(f"/proc/{daemon.pid}/maps").read_text()
    assert "libssl" not in maps and "/_ssl." not in maps


def test_cli_errors(daemon: Daemon, tmp_path: Path) -> None:
    bad = daemon.xinfctl("launch", "-n", "no-such-model", check=False)
    assert (
        bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown model 'no-such-model'" in bad.stderr
    )
    usage = daemon.xinfctl("launch", check=False)
    assert usage.returncode == 2 and "--model-name" in usage.stderr
    replicas = daemon.xinfctl("launch", "-n", "echo", "-r", "0", check=False)
    assert replicas.returncode == 2 and "--replica" in replicas.stderr
    env = daemon.xinfctl("launch", "-n", "echo", "--env", "CUDA_VISIBLE_DEVICES", "1", check=False)
    assert env.returncode == 2 and "CUDA_VISIBLE_DEVICES" in env.stderr
    gone = subprocess.run(
        [sys.executable, "-m", "xinfd.cli", "--socket", str(tmp_path / "none.sock"), "status"],
        capture_output=True,
        text=True,
        env=daemon.env,
    )
    assert gone.returncode == 1 and "xinfd is not running" in gone.stderr


def test_failed_launch_reports_the_reason(daemon: Daemon) -> None:
    result = daemon.xinfctl("launch", "-n", "echo", "--fail-load", "weights are corrupt", check=False)
    assert result.returncode == 1
    assert "weights are corrupt" in result.stderr
    assert daemon.xinfctl_json("list") == []


def test_client_disconnect_cancels_generation_upstream(daemon: Daemon) -> None:
    launch_echo(daemon, "--delay", "0.05", replicas=1)
    words = " ".join(f"w{i}" for i in range(400))  # 20 s of generation if nobody stops it
    body = json.dumps({"model": "echo", "prompt": words, "stream": True}).encode()
    host, port = daemon.endpoint.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while received.count(b"data: ") < 3:
            received += conn.recv(4096)
    # The replica must notice and stop: its in-flight count drops to zero long before the 20 s of tokens.
    started = time.monotonic()
    wait_for(lambda: daemon.xinfctl_json("list")[0]["replicas"][0]["outstanding"] == 0, timeout=5)
    log = wait_for(lambda: _aborted_line(daemon), timeout=5)
    assert time.monotonic() - started < 5
    assert "generation cancelled" in log
    # The request never finished normally: 400 tokens at 50 ms would have taken 20 s.
    request_id = log.split("xinfd.worker.host: ")[1].split(":")[0]
    assert f"{request_id} completion" not in (daemon.home / "logs" / "echo-r0.log").read_text()


def _aborted_line(daemon: Daemon) -> str | None:
    log_file = daemon.home / "logs" / "echo-r0.log"
    text = log_file.read_text() if log_file.exists() else ""
    return next((line for line in text.splitlines() if "aborted" in line or "cancelled" in line), None)
