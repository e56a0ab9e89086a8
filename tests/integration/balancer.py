"""HAProxy in front of real xinfd daemons, for the balancer test and ``benchmarks/balancer.py``.

The configuration is the shipped one: ``contrib/haproxy/render.py`` renders ``contrib/haproxy/haproxy.cfg``
with the daemons' loopback addresses (models discovered from their ``GET /v1/models``), and the test-only
values (bind addresses, check intervals, log target) go in through HAProxy's environment, exactly the knobs
an operator has. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RENDER = REPO / "contrib" / "haproxy" / "render.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_status(url: str, timeout: float = 2.0) -> int:
    """The status of ``GET url`` (0 when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None
    )


@dataclass
class Haproxy:
    """One HAProxy process running the rendered shipped configuration."""

    workdir: Path
    servers: Mapping[str, str]  # server name -> 127.0.0.1:port
    check_inter: str = "300ms"
    port: int = field(default_factory=free_port)
    stats_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.workdir / "haproxy.cfg"

    @property
    def log_path(self) -> Path:
        return self.workdir / "haproxy.log"

    def render(self) -> str:
        args = [sys.executable, str(RENDER), "--discover", "-o", str(self.config)]
        for name, address in self.servers.items():
            args += ["--server", f"{name}={address}"]
        subprocess.run(args, check=True, capture_output=True, text=True, timeout=60)
        return self.config.read_text()

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "XINFD_LB_BIND": f"127.0.0.1:{self.port}",
            "XINFD_LB_STATS_BIND": f"127.0.0.1:{self.stats_port}",
            "XINFD_LB_CHECK_INTER": self.check_inter,
            "XINFD_LB_CHECK_FASTINTER": "100ms",
            "XINFD_LB_LOG": "stdout",
            "XINFD_LB_MAXCONN": "1000",
        }

    def start(self, binary: str) -> Haproxy:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.config.exists():
            self.render()
        check = subprocess.run(
            [binary, "-c", "-f", str(self.config)], env=self.env(), capture_output=True, text=True, timeout=60
        )
        if check.returncode != 0:
            raise AssertionError(f"haproxy -c refused the rendered config:\n{check.stdout}{check.stderr}")
        sink = self.log_path.open("wb")
        # -db: stay in the foreground; -W would add a master process, one process is simpler to stop.
        self.proc = subprocess.Popen(
            [binary, "-db", "-f", str(self.config)], env=self.env(), stdout=sink, stderr=subprocess.STDOUT
        )
        sink.close()
        deadline = time.monotonic() + 20
        while http_status(f"http://127.0.0.1:{self.stats_port}/stats") != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"haproxy did not start:\n{self.log()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def server_states(self) -> dict[tuple[str, str], str]:
        """(backend, server) -> UP/DOWN/... from HAProxy's CSV stats."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5) as resp:
            lines = resp.read().decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        states = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("svname") not in ("FRONTEND", "BACKEND", None):
                states[(row["pxname"], row["svname"])] = row["status"].split(" ")[0]
        return states

    def wait_state(self, backend: str, server: str, state: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.server_states().get((backend, server)) != state:
            if time.monotonic() > deadline:
                raise AssertionError(f"{backend}/{server} not {state}: {self.server_states()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
