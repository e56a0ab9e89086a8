"""Idle daemon footprint: resident memory (VmRSS) and the time from ``exec`` to a 200 from ``GET /health``,
median of N starts, against a floor measured in the same run.

The floor is a bare interpreter that imports what any aiohttp daemon must (``asyncio``, ``aiohttp.web``) and
then says it is ready: xinfd cannot start faster or smaller than that. A bare ``python -c pass`` row shows the
interpreter alone. Targets: idle RSS <= 40 MiB, start -> healthy <= 0.3 s. Each daemon gets its own temp
XINFERENCE_HOME (so its control socket lives there) and a free port on 127.0.0.1; venvs are off and no model is
launched, so the figures are the daemon's own. The load average is printed first: figures taken on a busy
machine say so. ``PYTHONDONTWRITEBYTECODE`` is dropped from the children's environment and the bytecode is
compiled first, since a start that compiles every module measures the compiler.

    python benchmarks/startup.py [--starts 5]
"""

from __future__ import annotations

import argparse
import compileall
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
# The floor's child prints once its imports are done, then waits on stdin so that its RSS can be read.
FLOOR = "import asyncio, aiohttp.web, sys; print('ready', flush=True); sys.stdin.readline()"
BARE = "import sys; print('ready', flush=True); sys.stdin.readline()"


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` from ``/proc/PID/status`` (kB in the file)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XINFERENCE_", "XINFD_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return {**env, **extra}


def script_start(code: str) -> tuple[float, int]:
    """Seconds from spawn to the child's ``ready`` line, and its RSS then."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit(f"the floor script failed: {code}")
    elapsed = time.perf_counter() - started
    rss = rss_bytes(proc.pid)
    proc.stdin.write("\n")
    proc.stdin.close()
    proc.wait(timeout=30)
    return elapsed, rss


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def daemon_start(settle: float) -> tuple[float, int]:
    """Seconds from spawn to the first 200 from ``/health``, and the RSS ``settle`` seconds later (idle)."""
    with tempfile.TemporaryDirectory(prefix="xinfd-startup-") as tmp:
        port = free_port()
        env = child_env(XINFERENCE_HOME=tmp, XINFERENCE_ENABLE_VIRTUAL_ENV="0", HF_HUB_OFFLINE="1")
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "xinfd.daemon", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "WARNING"],
            cwd=REPO,  # python -m puts the working directory first on sys.path: this checkout's xinfd
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}/health"
            deadline = started + 60
            while not healthy(url):
                if proc.poll() is not None:
                    raise SystemExit(f"xinfd exited with status {proc.returncode} at start")
                if time.perf_counter() > deadline:
                    raise SystemExit("xinfd was not healthy within 60 s")
                time.sleep(0.01)
            elapsed = time.perf_counter() - started
            time.sleep(settle)
            return elapsed, rss_bytes(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def median_of(starts: int, measure: Callable[[], tuple[float, int]]) -> tuple[float, float, float]:
    """Median seconds, median MiB, and the spread of the seconds (max - min) over ``starts`` runs."""
    runs = [measure() for _ in range(starts)]
    seconds = [s for s, _ in runs]
    return statistics.median(seconds), statistics.median(r for _, r in runs) / MIB, max(seconds) - min(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=5, help="starts per row (the median is shown)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds idle before RSS is read")
    args = parser.parse_args()
    compileall.compile_dir(REPO / "xinfd", quiet=1)  # warm bytecode, as an installed wheel has
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} on {len(os.sched_getaffinity(0))} cores"
          + (" (not quiet: a shared, busy machine)" if load[0] > 0.5 else ""))
    rows = [
        ("python (bare)", median_of(args.starts, lambda: script_start(BARE))),
        ("python + asyncio + aiohttp.web (floor)", median_of(args.starts, lambda: script_start(FLOOR))),
        ("xinfd idle, start -> /health 200", median_of(args.starts, lambda: daemon_start(args.settle))),
    ]
    floor_s, floor_mib = rows[1][1][0], rows[1][1][1]
    print(f"{'':40} {'start s':>8} {'spread':>7} {'RSS MiB':>8} {'over floor':>16}")
    for name, (seconds, mib, spread) in rows:
        over = f"{seconds - floor_s:+.2f} s {mib - floor_mib:+.1f} MiB"
        print(f"{name:40} {seconds:8.3f} {spread:7.3f} {mib:8.1f} {over:>16}")
    print(f"median of {args.starts} starts each; targets: xinfd idle RSS <= 40 MiB, start -> healthy <= 0.3 s")


if __name__ == "__main__":
    main()
