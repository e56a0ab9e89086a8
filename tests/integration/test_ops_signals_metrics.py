"""systemd notify protocol, /metrics through promtool, and a disconnect storm, on a real daemon."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import Daemon, wait_for
from tests.integration.test_daemon import launch_echo, post
from tests.unit.ops.tools import ensure_tool


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    yield sock, path
    sock.close()


def receive(sock: socket.socket, until: Any, timeout: float = 20) -> list[str]:
    """Datagrams until ``until(messages)`` holds."""
    messages: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            messages.append(sock.recv(4096).decode())
        if until(messages):
            return messages
    raise AssertionError(f"not seen within {timeout}s: {messages}")


def test_notify_protocol_ready_status_watchdog_stopping(make_daemon: Any, notify_socket: Any) -> None:
    sock, path = notify_socket
    # WatchdogSec=0.4s: a ping every 0.2 s.
    daemon = make_daemon(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"}).start()
    assert daemon.proc is not None
    seen = receive(sock, lambda m: any(x.startswith("READY=1") for x in m) and m.count("WATCHDOG=1") >= 3)
    ready = next(x for x in seen if x.startswith("READY=1"))
    assert f"MAINPID={daemon.proc.pid}" in ready and "STATUS=serving on http://127.0.0.1:" in ready
    launch_echo(daemon, replicas=2)
    receive(sock, lambda m: any(x.startswith("STATUS=") and "2/2 replicas ready" in x for x in m))
    # Replicas are the daemon's children, not systemd's: they must not inherit the notify socket.
    for pid in daemon.replica_pids():
        with open(f"/proc/{pid}/environ", "rb") as fh:
            assert b"NOTIFY_SOCKET=" not in fh.read()
    daemon.proc.send_signal(signal.SIGTERM)
    seen = receive(sock, lambda m: any(x.startswith("STOPPING=1") for x in m))
    assert any("draining" in x for x in seen)
    assert daemon.proc.wait(timeout=30) == 0


def scrape(daemon: Daemon, headers: dict[str, str] | None = None) -> str:
    request = urllib.request.Request(f"{daemon.endpoint}/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(response.read().decode())


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` whose labels include ``labels`` (None if absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, _, value = line.rpartition(" ")
        metric, _, rest = series.partition("{")
        if metric == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            return float(value)
    return None


def test_metrics_cover_requests_tokens_replicas_and_pass_promtool(make_daemon: Any) -> None:
    promtool = ensure_tool("promtool", "prometheus")
    daemon = make_daemon(env={"XINFD_METRICS_API_KEYS": "scrape", "XINFD_API_KEYS": "sk-all"}).start()
    launch_echo(daemon, "--delay", "0.05", replicas=2)  # tokens 50 ms apart: separate chunks
    auth = {"Authorization": "Bearer sk-all", "Content-Type": "application/json"}
    for stream in (False, True):
        body = json.dumps(
            {"model": "echo", "messages": [{"role": "user", "content": "one two three"}], "stream": stream}
        ).encode()
        request = urllib.request.Request(f"{daemon.endpoint}/v1/chat/completions", data=body, headers=auth)
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
    text = scrape(daemon, {"Authorization": "Bearer scrape"})
    assert sample(text, "xinfd_requests_total", model="echo", endpoint="chat/completions", status="200") == 2
    assert sample(text, "xinfd_time_to_first_token_seconds_count", model="echo") == 1
    assert sample(text, "xinfd_inter_token_latency_seconds_count", model="echo") in (1, 2)  # 3 tokens: 2 gaps
    assert sample(text, "xinfd_completion_tokens_total", model="echo") == 6
    assert sample(text, "xinfd_prompt_tokens_total", model="echo") == 3  # usage of the non-streamed one
    assert sample(text, "xinfd_requests_in_flight", model="echo") == 0
    assert sample(text, "xinfd_replica_state", model="echo", replica="1", state="READY") == 1
    assert sample(text, "xinfd_replica_state", model="echo", replica="1", state="FAILED") == 0
    assert sample(text, "xinfd_replica_restarts", model="echo", replica="0") == 0
    assert sample(text, "xinfd_requests_queued", model="echo") == 0
    assert sample(text, "xinfd_gpu_slots") == 0 and sample(text, "xinfd_gpu_slots_used") == 0
    assert sample(text, "xinfd_venv_builds_total", result="ok") == 0
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == "", checked.stdout + checked.stderr


def test_metrics_can_be_disabled(make_daemon: Any) -> None:
    daemon = make_daemon(env={"XINFERENCE_DISABLE_METRICS": "1"}).start()
    status, _, _ = post(daemon.endpoint, "/metrics", {})
    with pytest.raises(urllib.error.HTTPError) as info:
        scrape(daemon)
    info.value.close()  # the error holds the connection open otherwise
    assert info.value.code == 404 and status in (404, 405)


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


async def _storm(endpoint: str, clients: int) -> int:
    """``clients`` streams opened at once, each dropped right after its first data frame."""
    words = " ".join(f"w{i}" for i in range(200))  # 10 s per stream if nobody stops it
    body = {"model": "echo", "prompt": words, "stream": True}
    dropped = 0

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal dropped
        async with session.post(f"{endpoint}/v1/completions", json=body) as resp:
            assert resp.status == 200
            while b"data: " not in await resp.content.readany():
                pass
            resp.close()  # drop the connection mid-stream
            dropped += 1

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(session) for _ in range(clients)))
    return dropped


def _settled(daemon: Daemon) -> bool:
    text = scrape(daemon)
    replicas = daemon.xinfctl_json("list")[0]["replicas"]
    return sample(text, "xinfd_requests_in_flight", model="echo") == 0 and all(
        r["outstanding"] == 0 for r in replicas
    )


def _worker_cancellations(daemon: Daemon) -> int:
    logs = [daemon.home / "logs" / f"echo-r{i}.log" for i in range(2)]
    return sum(p.read_text().count("client disconnected") for p in logs if p.exists())


async def test_disconnect_storm_returns_to_zero_and_releases_resources(make_daemon: Any) -> None:
    daemon = make_daemon().start()
    launch_echo(daemon, "--delay", "0.05", replicas=2)
    assert daemon.proc is not None
    pid = daemon.proc.pid
    # The first storm warms up (imports, allocator arenas, pools); the second must leave nothing behind.
    assert await _storm(daemon.endpoint, 200) == 200
    await asyncio.to_thread(wait_for, lambda: _settled(daemon), 30, 0.2)
    fds_before, rss_before = _fds(pid), _rss_kb(pid)
    assert await _storm(daemon.endpoint, 200) == 200
    await asyncio.to_thread(wait_for, lambda: _settled(daemon), 30, 0.2)
    text = scrape(daemon)
    assert sample(text, "xinfd_aborted_requests_total", model="echo", reason="client_disconnect") == 400
    # Measured on the replicas' side too: every dropped stream was cancelled there, none ran to its end.
    await asyncio.to_thread(wait_for, lambda: _worker_cancellations(daemon) == 400, 20, 0.2)
    assert await asyncio.to_thread(wait_for, lambda: _fds(pid) <= fds_before + 2, 15, 0.2)
    # Memory: back within a small slack of the warmed-up level (no per-request leak of 200 streams).
    assert _rss_kb(pid) <= rss_before + 8 * 1024, (rss_before, _rss_kb(pid))
    status, _, raw = post(daemon.endpoint, "/v1/completions", {"model": "echo", "prompt": "still fine"})
    assert status == 200 and json.loads(raw)["choices"][0]["text"] == "still fine"
