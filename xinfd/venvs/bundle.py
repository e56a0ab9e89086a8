"""What a venv for another Python needs of the daemon's environment (several Pythons per model).

A venv on the daemon's own interpreter sees the daemon's site-packages through a ``.pth`` file. Another
interpreter cannot: compiled extensions (aiohttp's, multidict's...) are built for one ABI. Such a venv gets
its own copies of what the replica's worker imports: the ``xinfd`` distribution and the distribution of the
plugin that provides the engine, with their dependencies resolved *for the venv's interpreter* by uv, from the
same indexes as the model's packages.

How a distribution gets there, decided from its installed metadata (``importlib.metadata``):

* pure Python (the usual case for xinfd and engine plugins, editable installs included): repacked from the
  files its ``RECORD`` lists into a ``py3-none-any`` wheel, in milliseconds and offline. An editable install
  repacks to its ``.pth`` file plus dist-info, i.e. the same editable install, so a source checkout is served
  as is, and its entry points (how the worker finds the engine) come along in ``entry_points.txt``. Rebuilding
  from the source tree instead would need the build backend from an index, and for a non-editable install the
  original wheel is not kept anywhere.
* anything with compiled files: ``name==version`` from the index, which must then have a build for the
  venv's Python.

Installer files (``RECORD``, ``INSTALLER``, ``direct_url.json``...) and console scripts are not copied: uv
writes its own. A plugin loaded through ``XINFD_PLUGINS`` that belongs to no distribution is not copied: the
replica gets ``XINFD_PLUGINS`` and ``PYTHONPATH`` from the daemon, and the build's probe proves it imports.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata
import io
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

from xinfd.plugins import ENTRY_POINT_GROUP, Plugins
from xinfd.venvs.python import PythonNotFoundError
from xinfd.venvs.spec import VenvError

# packaging is imported in the functions that use it: the daemon imports this module at start and needs
# packaging only once it builds a venv (idle memory, tests/unit/test_daemon_imports.py).

CORE_DISTRIBUTION = "xinfd"
# Written by the installer, not part of what a wheel carries.
_INSTALLER_FILES = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "WHEEL"})
_COMPILED_SUFFIXES = (".so", ".pyd", ".dylib", ".dll")


def _distribution(name: str) -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise VenvError(f"{name} is not an installed distribution in xinfd's environment, so it cannot be "
                        f"copied into a venv for another Python") from None


def plugin_distribution(plugins: Plugins, engine: str) -> str | None:
    """The distribution of the plugin that registered ``engine``: the owner of its entry point, else the
    installed distribution whose files hold the plugin module; None for a plain module on ``PYTHONPATH``."""
    owner = plugins.engine_owner.get(engine)
    plugin = plugins.pm.get_plugin(owner) if owner else None
    module = getattr(plugin, "__name__", None)
    if not isinstance(module, str):
        return None
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.module == module and ep.dist is not None:
            return str(ep.dist.name)
    source = getattr(plugin, "__file__", None)
    top = module.partition(".")[0]
    for name in importlib.metadata.packages_distributions().get(top, []):
        dist = importlib.metadata.distribution(name)
        if source and any(os.path.realpath(str(f.locate())) == os.path.realpath(source)
                          for f in dist.files or []):
            return name
    return None


def worker_distributions(plugins: Plugins, engine: str) -> tuple[str, ...]:
    """``name==version`` of what a foreign-Python venv for ``engine`` gets copied (part of the spec hash, so
    upgrading xinfd or the plugin yields a new venv rather than a stale copy)."""
    from packaging.utils import canonicalize_name

    names = [CORE_DISTRIBUTION]
    extra = plugin_distribution(plugins, engine)
    if extra is not None and canonicalize_name(extra) != CORE_DISTRIBUTION:
        names.append(extra)
    return tuple(f"{canonicalize_name(n)}=={_distribution(n).version}" for n in names)


def check_python_supported(bundled: Sequence[str], version: str) -> None:  # items: name or name==version
    """Refuse, before building, an interpreter that a copied distribution does not support (xinfd's
    ``Requires-Python`` is >= 3.11): uv would only say so after resolving."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    for item in bundled:
        name = item.partition("==")[0]
        requires = (_distribution(name).metadata.get_all("Requires-Python") or [None])[0]
        if not requires:
            continue
        try:
            ok = SpecifierSet(requires).contains(version, prereleases=True)
        except InvalidSpecifier:
            continue
        if not ok:
            raise PythonNotFoundError(f"Python {version} cannot run {name} (it requires Python {requires})",
                                      param="python")


def is_pure(dist: importlib.metadata.Distribution) -> bool:
    """Installed as a pure-Python wheel and no compiled file among its files: safe for any interpreter."""
    wheel = dist.read_text("WHEEL") or ""
    if "root-is-purelib: true" not in wheel.lower() or dist.files is None:
        return False
    return not any(str(f).endswith(_COMPILED_SUFFIXES) for f in dist.files)


def requirement_lines(bundled: Sequence[str], wheel_dir: Path) -> list[str]:
    """Requirement lines that put ``bundled`` into a venv: ``name @ file://...whl`` for pure distributions
    (repacked), else ``name==version``. Fails if a distribution changed since the spec was made."""
    lines = []
    for item in bundled:
        name, _, version = item.partition("==")
        dist = _distribution(name)
        if dist.version != version:
            raise VenvError(f"{name} changed from {version} to {dist.version} during the build; launch again")
        if is_pure(dist):
            lines.append(f"{name} @ {repack(dist, wheel_dir).as_uri()}")
        else:
            lines.append(f"{name}=={version}")
    return lines


def repack(dist: importlib.metadata.Distribution, out_dir: Path) -> Path:
    """A ``py3-none-any`` wheel of an installed pure distribution, from the files its ``RECORD`` lists."""
    files: dict[str, bytes] = {}
    info_dir = None
    for entry in dist.files or []:
        posix = entry.as_posix()
        if posix.startswith("..") or "__pycache__" in posix or posix.endswith(".pyc"):
            continue  # scripts and data outside site-packages: the installer makes scripts from entry points
        head, _, base = posix.partition("/")
        if head.endswith(".dist-info"):
            info_dir = head
            if base in _INSTALLER_FILES:
                continue
        path = Path(str(entry.locate()))
        if path.is_file():
            files[posix] = path.read_bytes()
    if info_dir is None:
        raise VenvError(f"{dist.metadata['Name']}: installed without a .dist-info directory; cannot copy it")
    files[f"{info_dir}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: xinfd\nRoot-Is-Purelib: true\n"
                                  b"Tag: py3-none-any\n")
    rows = [[p, "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b"=").decode(),
             str(len(d))] for p, d in files.items()]
    rows.append([f"{info_dir}/RECORD", "", ""])
    record = io.StringIO()
    csv.writer(record, lineterminator="\n").writerows(rows)
    files[f"{info_dir}/RECORD"] = record.getvalue().encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = info_dir.removesuffix(".dist-info")  # already {escaped name}-{version}, as a wheel name wants
    wheel = out_dir / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for p, d in files.items():
            zf.writestr(p, d)
    return wheel
