"""A real xinfd daemon as a subprocess, driven through xinfctl and HTTP, with its home under a temp dir."""

from __future__ import annotations

import contextlib
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


def pid_namespace_works() -> bool:
    """Whether this host lets the tests run a daemon as PID 1 of a new PID namespace (needs root here)."""
    try:
        return subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# xinfd as a container runs it: PID 1 of its own PID namespace, with no init. ``--kill-child``: if the test
# kills unshare, the namespace dies with it.
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]


@dataclass(frozen=True)
class ProcInfo:
    """One process as the test sees it: host pid, pid inside the daemon's namespace, state, command."""

    pid: int
    ns_pid: int
    state: str
    ppid: int
    cmdline: str


def proc_info(pid: int) -> ProcInfo | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return None
    nspid = next((line.split()[-1] for line in status.splitlines() if line.startswith("NSpid:")), str(pid))
    return ProcInfo(pid=pid, ns_pid=int(nspid), state=stat[0], ppid=int(stat[1]), cmdline=cmdline.strip())


@dataclass
class Daemon:
    """A running xinfd; ``endpoint`` is the front end's base URL (an ephemeral loopback port).

    With ``pid_namespace`` the daemon runs as PID 1 of its own PID namespace (``unshare``), as in a container
    without an init: ``proc`` is then the ``unshare`` process, ``pid`` the daemon's pid as the test sees it, and
    the pids xinfctl reports are the namespace's (``host_pid`` translates them).
    """

    home: Path
    socket: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    endpoint: str = ""
    log_path: Path = field(default_factory=Path)
    pid_namespace: bool = False

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
            [*(UNSHARE if self.pid_namespace else []), sys.executable, "-m", "xinfd.daemon", "--port", "0", *extra],
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
            if self.pid_namespace:  # unshare ignores SIGTERM and SIGINT: signal the namespace's PID 1
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, sig)
            else:
                self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    @property
    def pid(self) -> int:
        """The daemon's pid as the test sees it."""
        assert self.proc is not None
        if not self.pid_namespace:
            return self.proc.pid

        def child() -> int | None:
            path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")  # type: ignore[union-attr]
            kids = path.read_text().split() if path.exists() else []
            return int(kids[0]) if kids else None

        found: int = wait_for(child, timeout=10)
        return found

    def processes(self) -> list[ProcInfo]:
        """Every process of the daemon's world but the daemon: the namespace's, or its descendants."""
        root = self.pid
        if self.pid_namespace:
            ns = os.readlink(f"/proc/{root}/ns/pid")

            def member(pid: int) -> bool:
                try:
                    return pid != root and os.readlink(f"/proc/{pid}/ns/pid") == ns
                except OSError:
                    return False

            return [info for pid in _all_pids() if member(pid) and (info := proc_info(pid)) is not None]
        infos = {info.pid: info for pid in _all_pids() if (info := proc_info(pid)) is not None}
        family: list[ProcInfo] = []
        frontier = {root}
        while frontier:
            kids = [info for info in infos.values() if info.ppid in frontier]
            family += kids
            frontier = {info.pid for info in kids}
        return family

    def host_pid(self, pid: int) -> int:
        """The test's pid of a process the daemon reports as ``pid``."""
        if not self.pid_namespace:
            return pid
        found: int = wait_for(
            lambda: next((info.pid for info in self.processes() if info.ns_pid == pid), None), timeout=5
        )
        return found

    def replica_pids(self) -> list[int]:
        return [r["pid"] for m in self.xinfctl_json("list") for r in m["replicas"] if r["pid"]]


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def daemon_env(home: Path, extra: Mapping[str, str] = {}) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XINFERENCE_", "XINFD_"))}
    env.update(
        {
            "XINFERENCE_HOME": str(home),
            "XINFD_STOP_GRACE_PERIOD": "3",
            "XINFERENCE_ENABLE_VIRTUAL_ENV": "0",
            "OMP_NUM_THREADS": "1",
            # One thread per replica keeps tests light on a shared machine (the daemon's own OMP_NUM_THREADS
            # does not reach replicas: the CPU thread budget sets theirs).
            "XINFD_CPU_THREADS_PER_REPLICA": "1",
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

    def factory(name: str = "home", env: Mapping[str, str] = {}, *, pid_namespace: bool = False) -> Daemon:
        home = tmp_path / name
        home.mkdir(exist_ok=True)
        daemon = Daemon(
            home=home, socket=home / "xinfd.sock", env=daemon_env(home, env), pid_namespace=pid_namespace
        )
        started.append(daemon)
        return daemon

    yield factory
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            try:
                daemon.stop(signal.SIGTERM, timeout=30)
            except subprocess.TimeoutExpired:
                daemon.proc.kill()
                daemon.proc.wait()


@pytest.fixture
def daemon(make_daemon: Any) -> Daemon:
    d: Daemon = make_daemon().start()
    return d
