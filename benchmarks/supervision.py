"""Supervision cost and failover time.

1. Daemon CPU while it supervises N idle echo replicas (default 64) with health checks on, as % of one core,
   against the same daemon idle with no replica, measured in the same run (target: < 2 % of a core).
2. Failover: ``kill -9`` of a replica -> that replica READY again (the first restart's 0.5 s backoff
   included), against a cold launch of one replica measured in the same run; and whether traffic to the
   model is interrupted meanwhile (requests are sent throughout; the other replicas serve them).

Run from a checkout with xinfd and the echo plugin installed:

    python benchmarks/supervision.py [--replicas 64] [--seconds 30] [--kills 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from xinfd.cli.client import ControlClient
from xinfd.types import replica_label

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Daemon:
    """A real xinfd in a temp home, driven through xinfctl (what operators use)."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("XINFERENCE_", "XINFD_"))},
            "XINFERENCE_HOME": str(home),
            "XINFERENCE_ENABLE_VIRTUAL_ENV": "0",
            "OMP_NUM_THREADS": "1",
            **env,
        }
        log = (home / "daemon.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "xinfd.daemon", "--port", "0"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while self.ctl("status", check=False).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"xinfd did not start; see {home / 'daemon.log'}")
            time.sleep(0.1)
        self.endpoint = self.ctl_json("status")["endpoint"]

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "xinfd.cli", *args], env=self.env, capture_output=True,
                                text=True, timeout=900)
        if check and result.returncode != 0:
            raise SystemExit(f"xinfctl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def ctl_json(self, *args: str) -> Any:
        return json.loads(self.ctl(*args, "--json").stdout)

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime of the daemon itself

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=300)


def cpu_percent(daemon: Daemon, seconds: float) -> float:
    before, started = daemon.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return 100 * (daemon.cpu_seconds() - before) / (time.monotonic() - started)


def chat_ok(endpoint: str) -> bool:
    body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "ping"}]}).encode()
    request = urllib.request.Request(f"{endpoint}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def replica(daemon: Daemon, label: str) -> dict[str, Any]:
    # In-process control client (no xinfctl start-up per poll), so the timing resolution is milliseconds.
    models = ControlClient(daemon.home / "xinfd.sock").call("GET", "/v1/models")
    found: dict[str, Any] = next(r for m in models for r in m["replicas"] if r["label"] == label)
    return found


def failover(daemon: Daemon, kills: int) -> tuple[list[float], int, int]:
    """Seconds from kill -9 to READY again, per kill; and requests served / failed meanwhile.

    Each kill hits a different replica: a replica killed again soon after is a crash loop and waits out a
    doubled backoff, which is the policy working, not failover time.
    """
    times: list[float] = []
    served = failed = 0
    for n in range(1, kills + 1):
        label = replica_label("echo", n)
        victim = replica(daemon, label)
        killed = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        while True:
            served, failed = (served + 1, failed) if chat_ok(daemon.endpoint) else (served, failed + 1)
            now = replica(daemon, label)
            if now["state"] == "READY" and now["pid"] != victim["pid"]:
                times.append(time.monotonic() - killed)
                break
        time.sleep(0.5)
    return times, served, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0, help="CPU measurement window")
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="xinfd-bench-") as tmp:
        # XINFD_RESTART_BUDGET high: repeated kills in this benchmark must not exhaust the restart budget.
        daemon = Daemon(Path(tmp), {"XINFD_RESTART_BUDGET": "100"})
        try:
            idle = cpu_percent(daemon, args.seconds)
            started = time.monotonic()
            daemon.ctl("launch", "-n", "echo", "-u", "many", "-r", str(args.replicas))
            launch_s = time.monotonic() - started
            time.sleep(2)  # let the launch's own work settle
            supervising = cpu_percent(daemon, args.seconds)
            daemon.ctl("terminate", "many")

            started = time.monotonic()
            daemon.ctl("launch", "-n", "echo", "-r", "1")
            cold = time.monotonic() - started
            daemon.ctl("scale", "echo", str(args.kills + 1))
            times, served, failed = failover(daemon, args.kills)
        finally:
            daemon.stop()

    print(f"\nsupervision ({os.cpu_count()} CPUs, health checks every 5 s, {args.seconds:.0f}s windows)\n")
    print(f"{'measure':<52}{'value':>12}{'baseline':>12}{'ratio':>8}")
    print(f"{'daemon CPU, % of one core, ' + str(args.replicas) + ' idle replicas':<52}{supervising:>11.2f}%"
          f"{idle:>11.2f}%{f'{supervising / idle:.1f}' if idle else 'n/a':>8}")
    print(f"{'launch of ' + str(args.replicas) + ' replicas, s':<52}{launch_s:>12.1f}{'':>12}{'':>8}")
    median = statistics.median(times)
    print(f"{'failover kill -9 -> READY, median s (' + str(len(times)) + ' kills)':<52}{median:>12.2f}"
          f"{cold:>12.2f}{median / cold:>8.2f}")
    worst = max(times)
    print(f"{'failover kill -9 -> READY, max s':<52}{worst:>12.2f}{cold:>12.2f}{worst / cold:>8.2f}")
    print(f"{'requests served / failed during failovers':<52}{served:>7} / {failed:<3}")
    print("\nbaselines: the same daemon with no replica (CPU); cold launch of 1 replica (failover)")
    print(f"target: < 2 % of a core -> {'met' if supervising < 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
