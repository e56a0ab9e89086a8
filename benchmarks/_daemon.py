"""A throwaway xinfd for a benchmark: started from this checkout on a free port, stopped with SIGTERM.

Shared by ``batching.py``, ``load.py`` and ``proxy.py`` (run as scripts, so this folder is on ``sys.path``).
Venvs are off (the benchmarks measure serving, not installs) and each replica gets one thread unless
``OMP_NUM_THREADS`` says otherwise (passed on as ``XINFD_CPU_THREADS_PER_REPLICA``: the daemon's own
``OMP_NUM_THREADS`` does not reach replicas), or ``one_thread=False`` leaves them to the daemon's split.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def running_daemon(
    home: Path, *, stop_timeout: float = 90, one_thread: bool = True, settings: dict[str, str] | None = None
) -> Iterator[dict[str, str]]:
    """Start ``xinfd`` with ``home`` as XINFERENCE_HOME; yields the environment ``xinfctl`` needs.

    ``one_thread=False`` leaves the replicas' thread counts to the daemon (its CPU budget), as in production;
    ``settings`` are more variables for the daemon (``XINFD_PRELOAD_ENGINES``...).
    """
    env = {**os.environ, "XINFERENCE_HOME": str(home), "XINFERENCE_ENABLE_VIRTUAL_ENV": "0", **(settings or {})}
    if one_thread:
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("XINFD_CPU_THREADS_PER_REPLICA", env["OMP_NUM_THREADS"])
    else:
        env.pop("OMP_NUM_THREADS", None)
        env.pop("XINFD_CPU_THREADS_PER_REPLICA", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "xinfd.daemon", "--port", "0", "--log-level", "WARNING"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            if (home / "xinfd.sock").exists():
                break
            if proc.poll() is not None:
                raise SystemExit(f"xinfd exited with status {proc.returncode} at start")
            time.sleep(0.05)
        else:
            raise SystemExit("xinfd did not open its control socket within 30 s")
        yield env
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def xinfctl(env: dict[str, str], *args: str) -> Any:
    """Run ``xinfctl ARGS --json`` against the benchmark's daemon; returns the parsed answer (None if empty)."""
    out = subprocess.run(
        [sys.executable, "-m", "xinfd.cli", *args, "--json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return json.loads(out.stdout) if out.stdout.strip() else None
