"""What a model venv's interpreter sees, read from ``.dist-info`` directories instead of starting it.

A build used to start the new venv's interpreter to list the distributions it sees (to skip what the base
already has), and ``uv pip freeze`` to record what it installed: two process starts that, on a loaded machine,
cost more than the install itself. Both answers are directory listings:

* an installed distribution is a ``{name}-{version}.dist-info`` directory (PEP 376/427; installers escape the
  name, so the directory name parses without reading ``METADATA``);
* a venv made with ``--system-site-packages`` from the daemon's own interpreter sees, in ``sys.path`` order
  (``site.main``): ``PYTHONPATH``, the standard library, the user site-packages, its own site-packages, the
  directories its ``.pth`` adds (the daemon's venv), then the base interpreter's site-packages.

The build's import probe, which starts the interpreter anyway, checks that every distribution a build skipped
is really there at that version (``xinfd.venvs.builder``), so a wrong prediction can never publish a venv
that lacks a package.
"""

from __future__ import annotations

import json
import os
import re
import site
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from pathlib import Path

_NAME_RE = re.compile(r"[-_.]+")


def canonical(name: str) -> str:
    """PEP 503 normalised name (what ``packaging.utils.canonicalize_name`` returns, without the import)."""
    return _NAME_RE.sub("-", name).lower()


def predicted_path(venv_site: Path, added_dirs: Sequence[str], env: dict[str, str] | None = None) -> list[str]:
    """The ``sys.path`` entries that hold distributions for a ``--system-site-packages`` venv of the daemon's
    interpreter whose ``.pth`` adds ``added_dirs`` (see the module docstring for the order)."""
    env = dict(os.environ) if env is None else env
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    paths += [sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib")]
    if not env.get("PYTHONNOUSERSITE"):
        paths.append(site.getusersitepackages())
    paths += [str(venv_site), *added_dirs, *site.getsitepackages([sys.base_prefix])]
    return list(dict.fromkeys(p for p in paths if os.path.isdir(p)))


def _entries(directory: str) -> Iterable[tuple[str, str, str]]:
    """(canonical name, version, directory entry) of each distribution in one directory, sorted."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return
    for entry in names:
        if entry.endswith(".dist-info"):
            name, sep, version = entry.removesuffix(".dist-info").rpartition("-")
        elif entry.endswith(".egg-info"):  # legacy installs: name-version[-pyX.Y]
            name, sep, version = entry.removesuffix(".egg-info").partition("-")
            version = version.split("-py", 1)[0]
        else:
            continue
        if sep and name and version:
            yield canonical(name), version, entry


def visible(paths: Sequence[str]) -> dict[str, str]:
    """canonical name -> version of every distribution on ``paths``; the first of a name wins, as for imports."""
    seen: dict[str, str] = {}
    for directory in paths:
        for name, version, _ in _entries(directory):
            seen.setdefault(name, version)
    return seen


def freeze(venv_site: Path) -> list[str]:
    """``name==version`` (``name @ url`` for a direct-URL install, PEP 610) of each distribution in the venv's
    own site-packages: what ``uv pip freeze`` prints, without starting uv."""
    lines: list[str] = []
    for name, version, entry in _entries(str(venv_site)):
        try:
            url = json.loads((venv_site / entry / "direct_url.json").read_text()).get("url")
        except (OSError, ValueError, AttributeError):
            url = None
        lines.append(f"{name} @ {url}" if isinstance(url, str) and url else f"{name}=={version}")
    return sorted(lines)  # by name, as uv prints them
