"""Choosing the interpreter of a model venv: several Python versions per model, an interpreter present on
the machine chosen at launch (default: the daemon's).

A request is a version (``3.12``, ``3.12.1``) or an absolute interpreter path. uv finds it
(``uv python find --system``), never downloads one (``--no-python-downloads``), and the interpreter itself
then says what it is. Two things uv does not do for us:

* pyenv's shims defeat uv's search: a shim for a version that is not ``pyenv global`` exits 127 and uv aborts
  the whole discovery instead of skipping it (astral-sh/uv#21047). So uv searches a ``PATH`` where pyenv's
  shim directories are replaced by the ``bin`` directories of the installed pyenv versions, newest first.
* Whether the daemon's own packages can be shared with the venv: compiled extensions are built for one
  interpreter, so only the daemon's own installation (same base prefix, same version) may see its
  site-packages; any other interpreter gets its own copies (``xinfd.venvs.bundle``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xinfd.childproc import spawn_child
from xinfd.venvs.spec import VenvSpecError

if TYPE_CHECKING:
    from xinfd.venvs.builder import Uv

_VERSION_RE = re.compile(r"^\d{1,2}\.\d{1,3}(?:\.\d{1,3})?$")
_FIND_TIMEOUT_S = 30.0
# What the candidate interpreter reports about itself (run with -I: isolated from the caller's environment).
_PROBE = (
    "import json, os, platform, sys, sysconfig\n"
    "print(json.dumps({'version': platform.python_version(), 'executable': sys.executable,\n"
    "                  'base_prefix': os.path.realpath(sys.base_prefix),\n"
    "                  'implementation': sys.implementation.name,\n"
    "                  'soabi': sysconfig.get_config_var('SOABI') or ''}))\n"
)


class PythonNotFoundError(VenvSpecError):
    """The requested interpreter is not on this machine (or cannot run xinfd's worker): a 400, one line."""

    code = "python_not_found"


@dataclass(frozen=True, slots=True, kw_only=True)
class Interpreter:
    """A concrete interpreter for a model venv."""

    path: str
    version: str  # full version, the venv path's {python_version} level
    # The daemon's own installation: the venv may see the daemon's site-packages (same compiled extensions).
    shares_daemon_env: bool


def check_python_request(value: object) -> str:
    """Validate the ``python`` field of a launch or venv request (the HTTP edge and the CLI use this).

    A version selects among the interpreters uv finds; an absolute path names one. Anything else (``python3``,
    ``--foo``, a relative path) is refused: the value goes to uv as an argument and names a directory level.
    """
    if isinstance(value, str):
        text = value.strip()
        if _VERSION_RE.match(text):
            return text
        if (text.startswith("/") and os.path.normpath(text) == text and "\0" not in text
                and not any(c.isspace() for c in text)):
            return text
    raise VenvSpecError(f"python must be a version like 3.12 or 3.12.1, or an absolute interpreter path; "
                        f"got {value!r}", param="python")


def version_matches(full: str, wanted: str) -> bool:
    """``3.12`` matches ``3.12.1``; ``3.12.1`` matches only itself (``venv remove --python``)."""
    return full.split(".")[: len(wanted.split("."))] == wanted.split(".")


def _pyenv_bins(root: Path) -> list[str]:
    """``bin`` directories of pyenv's installed versions, newest first (pyenv-virtualenv symlinks skipped)."""
    versions = root / "versions"
    if not versions.is_dir():
        return []

    def key(p: Path) -> tuple[int, ...]:
        return tuple(int(x) if x.isdigit() else -1 for x in re.split(r"[.-]", p.name))

    found = [p for p in versions.iterdir() if p.is_dir() and not p.is_symlink() and (p / "bin").is_dir()]
    return [str(p / "bin") for p in sorted(found, key=key, reverse=True)]


def search_path(env: dict[str, str]) -> str:
    """The ``PATH`` uv searches: as given, with pyenv's shim directories replaced by its real interpreters."""
    root = Path(env.get("PYENV_ROOT") or Path.home() / ".pyenv")
    entries = [e for e in env.get("PATH", os.defpath).split(os.pathsep) if e]
    shim = [e for e in entries if Path(e).name == "shims" and Path(e).is_relative_to(root)]
    if not shim:
        return os.pathsep.join(entries)
    kept = [e for e in entries if e not in shim]
    at = entries.index(shim[0])
    insert_at = len([e for e in entries[:at] if e not in shim])
    return os.pathsep.join(kept[:insert_at] + _pyenv_bins(root) + kept[insert_at:])


async def _run(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    proc = await spawn_child(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=_FIND_TIMEOUT_S)
    except (asyncio.CancelledError, TimeoutError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own group (child_setup): what it started goes too
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def find_interpreter(uv: Uv, request: str) -> Interpreter:
    """Resolve a checked request to an interpreter present on this machine, else ``PythonNotFoundError``."""
    env = uv.env()
    env["PATH"] = search_path(env)
    if request.startswith("/"):
        if not os.access(request, os.X_OK) or os.path.isdir(request):
            raise PythonNotFoundError(f"python {request} is not an executable file on this machine",
                                      param="python")
        path = request
    else:
        code, out, _ = await _run([uv.binary, "python", "find", "--system", "--no-python-downloads", request],
                                  env)
        path = out.strip()
        if code != 0 or not path:
            raise PythonNotFoundError(f"Python {request} is not installed on this machine (uv found no "
                                      f"matching interpreter; xinfd never downloads one)", param="python")
    env.pop("PYTHONPATH", None)
    code, out, err = await _run([path, "-I", "-c", _PROBE], env)
    try:
        info = json.loads(out)
    except ValueError:
        info = None
    if code != 0 or not isinstance(info, dict):
        last = (err.strip().splitlines() or [f"exit {code}"])[-1]
        raise PythonNotFoundError(f"python {request} ({path}) does not run: {last}", param="python")
    version = str(info["version"])
    if not request.startswith("/") and not version_matches(version, request):
        raise PythonNotFoundError(f"Python {request} is not installed on this machine ({path} is {version})",
                                  param="python")
    same = (info["base_prefix"] == os.path.realpath(sys.base_prefix) and version == platform.python_version()
            and info["soabi"] == str(sysconfig.get_config_var("SOABI") or ""))
    return Interpreter(path=str(info["executable"]) or path, version=version, shares_daemon_env=same)
