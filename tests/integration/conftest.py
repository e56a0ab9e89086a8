"""A real xinfd daemon as a subprocess, driven through xinfctl and HTTP, with its home under a temp dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@dataclass
class Daemon:
    """A running xinfd; ``endpoint`` is the front end's base URL (an ephemeral loopback port)."""

    home: Path
    socket: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    endpoint: str = ""
    log_path: Path = field(default_factory=Path)

    def xinfctl(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "xinfd.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"xinfctl {' '.join(args)} -> {result.returncode}: {result.stderr}")
        return result

    def xinfctl_json(self, *args: str) -> Any:
        return json.loads(self.xinfctl(*args, "--json").stdout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, *extra: str, wait: bool = True) -> Daemon:
        self.log_path = self.home / f"daemon-{time.monotonic_ns()}.log"
        sink = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xinfd.daemon", "--port", "0", *extra],
            env=self.env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        sink.close()
        if wait:

            def up() -> bool:
                if self.proc is not None and self.proc.poll() is not None:
                    raise AssertionError(f"xinfd exited with {self.proc.returncode}:\n{self.log()}")
                return self.socket.exists() and self.xinfctl("status", check=False).returncode == 0

            wait_for(up, timeout=30)
            self.endpoint = self.xinfctl_json("status")["endpoint"]
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def replica_pids(self) -> list[int]:
        return [r["pid"] for m in self.xinfctl_json("list") for r in m["replicas"] if r["pid"]]


def daemon_env(home: Path, extra: Mapping[str, str] = {}) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XINFERENCE_", "XINFD_"))}
    env.update(
        {
            "XINFERENCE_HOME": str(home),
            "XINFD_STOP_GRACE_PERIOD": "3",
            "XINFERENCE_ENABLE_VIRTUAL_ENV": "0",
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
            **extra,
        }
    )
    return env


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Any]:
    """Factory of daemons (several per test share nothing but what the test passes); all are stopped after."""
    started: list[Daemon] = []

    def factory(name: str = "home", env: Mapping[str, str] = {}) -> Daemon:
        home = tmp_path / name
        home.mkdir(exist_ok=True)
        daemon = Daemon(home=home, socket=home / "xinfd.sock", env=daemon_env(home, env))
        started.append(daemon)
        return daemon

    yield factory
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.send_signal(signal.SIGTERM)
            try:
                daemon.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.proc.kill()
                daemon.proc.wait()


@pytest.fixture
def daemon(make_daemon: Any) -> Daemon:
    d: Daemon = make_daemon().start()
    return d
