"""SIGHUP reload merging, the drain, and the systemd notify protocol on a real datagram socket."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from xinfd.config import load_settings
from xinfd.errors import ConfigError
from xinfd.lifecycle import Lifecycle, merge_reload, status_summary
from xinfd.sdnotify import notify, status_loop, watchdog_interval, watchdog_loop, without_notify_env


def settings(tmp_path: Path, **env: str) -> Any:
    return load_settings(env={"XINFERENCE_HOME": str(tmp_path), **env})


def test_merge_reload_takes_reloadable_fields_only(tmp_path: Path) -> None:
    old = settings(tmp_path)
    new = settings(
        tmp_path,
        XINFD_API_KEYS="k1",
        XINFD_LOG_LEVEL="debug",
        XINFD_PORT="1234",
        XINFERENCE_ALLOWED_IPS="10.0.0.0/8",
    )
    merged, changed, ignored = merge_reload(old, new)
    assert sorted(changed) == ["allowed_ips", "api_keys", "log_level"]
    assert ignored == ["port"]
    assert merged.api_keys == ("k1",) and merged.log_level == "DEBUG" and merged.port == old.port
    assert merged.sources["api_keys"] == "env XINFD_API_KEYS" and merged.sources["port"] == "default"


class FakeManager:
    def __init__(self) -> None:
        self.models: dict[str, Any] = {}
        self.log_dir = Path("/nonexistent")


def make_state(tmp_path: Path) -> Any:
    return SimpleNamespace(
        settings=settings(tmp_path, XINFD_DRAIN_TIMEOUT="5"),
        manager=FakeManager(),
        draining=False,
        in_flight=0,
        front_end_url="http://127.0.0.1:1",
    )


async def test_drain_waits_for_requests_in_flight(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    state.in_flight = 2
    life = Lifecycle(state)

    async def finish_requests() -> None:
        await asyncio.sleep(0.1)
        assert state.draining  # new requests are refused while these finish
        state.in_flight = 0

    finisher = asyncio.create_task(finish_requests())
    await asyncio.wait_for(life.drain(), timeout=4)
    await finisher
    assert state.draining and state.in_flight == 0


async def test_drain_gives_up_after_the_timeout(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    state.settings = settings(tmp_path, XINFD_DRAIN_TIMEOUT="0.1")
    state.in_flight = 1
    await asyncio.wait_for(Lifecycle(state).drain(), timeout=3)
    assert state.in_flight == 1


async def test_run_reloads_on_hup_and_returns_on_stop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = make_state(tmp_path)
    versions = iter([settings(tmp_path, XINFD_API_KEYS="k2", XINFD_DRAIN_TIMEOUT="5")])

    def reload() -> Any:
        try:
            return next(versions)
        except StopIteration:
            raise ConfigError("XINFD_PORT: expected an integer") from None

    levels: list[str] = []
    life = Lifecycle(state, reload=reload, apply_log_level=levels.append)
    runner = asyncio.create_task(life.run())
    life.request_reload()
    await asyncio.sleep(0.05)
    assert state.settings.api_keys == ("k2",)
    life.request_reload()  # a broken config on the second HUP: logged, the current settings stay
    await asyncio.sleep(0.05)
    assert state.settings.api_keys == ("k2",)
    life.request_stop()
    await asyncio.wait_for(runner, timeout=5)
    assert state.draining
    assert "reload failed, keeping the current configuration" in caplog.text
    assert "k2" not in caplog.text  # secrets are never logged


def test_status_summary_mentions_launches(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    replica = SimpleNamespace(is_ready=True)
    state.manager.models = {
        "a": SimpleNamespace(uid="a", state="LAUNCHING", replicas=[replica]),
        "b": SimpleNamespace(uid="b", state="READY", replicas=[replica, replica]),
    }
    assert (
        status_summary(state) == "serving on http://127.0.0.1:1: 2 model(s), 3/3 replicas ready; launching a"
    )
    state.draining, state.in_flight = True, 4
    assert status_summary(state) == "draining: 4 request(s) in flight"


@pytest.fixture
def notify_sock(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.setblocking(False)
    yield sock, path
    sock.close()


def test_notify_sends_one_datagram(notify_sock: tuple[socket.socket, str]) -> None:
    sock, path = notify_sock
    assert notify("READY=1\nSTATUS=ok", {"NOTIFY_SOCKET": path})
    assert sock.recv(1024) == b"READY=1\nSTATUS=ok"
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": path + "-missing"})  # logged, never raised


def test_notify_abstract_socket() -> None:
    name = f"xinfd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(64) == b"WATCHDOG=1"


def test_watchdog_interval_is_half_and_respects_the_pid() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None and watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert without_notify_env({"NOTIFY_SOCKET": "x", "WATCHDOG_USEC": "1", "PATH": "/bin"}) == {
        "PATH": "/bin"
    }


async def test_watchdog_and_status_loops_ping(notify_sock: tuple[socket.socket, str]) -> None:
    sock, path = notify_sock
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"}  # a ping every 10 ms
    summaries = iter(["starting", "starting", "serving"])
    tasks = [
        asyncio.create_task(watchdog_loop(env)),
        asyncio.create_task(status_loop(lambda: next(summaries, "serving"), env, poll=0.01)),
    ]
    got = []
    for _ in range(10):
        await asyncio.sleep(0.01)
        got += _drain(sock)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    got += _drain(sock)
    assert got.count("WATCHDOG=1") >= 3
    assert [m for m in got if m.startswith("STATUS=")] == [
        "STATUS=starting",
        "STATUS=serving",
    ]  # changes only


def _drain(sock: socket.socket) -> list[str]:
    got = []
    while True:
        try:
            got.append(sock.recv(64).decode())
        except BlockingIOError:
            return got


def test_a_full_notify_queue_never_blocks(notify_sock: tuple[socket.socket, str]) -> None:
    _, path = notify_sock
    # Nobody reads: after the kernel's queue limit, sends fail (and are logged) instead of blocking.
    results = [notify("WATCHDOG=1", {"NOTIFY_SOCKET": path}) for _ in range(2000)]
    assert results[0] and not results[-1]
