"""Where model venvs live, how they are locked, verified, listed and removed.

Layout under ``$XINFERENCE_HOME/virtualenv/v4/{model_name}/{model_engine}/`` (the spec's documented path)::

    {python_version}                  -> symlink to the newest published venv of this model/engine/python
    {python_version}-{digest}/        one published venv per spec digest (bin/python, xinfd-venv.json, ...)
    .{python_version}-{digest}.lock   flock taken while that digest is built, checked, published or removed
    .build-{python_version}-{digest}-{pid}-{token}/   a build in progress (or a crash's leftover)
    .trash-{...}/                     a venv renamed away for deletion (rename is atomic, rmtree is not)

So the documented path is always a complete venv, a changed spec (another ``-vp``) gets its own directory next
to it, and a replica runs from its digest directory: swapping the symlink never touches a running replica.
A directory without valid metadata is never used; a crash leaves only ``.build-*``/``.trash-*`` entries, which
are removed at the next start (their lock is free) or by ``venv gc``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xinfd.atomic import DEFAULT, write_atomic
from xinfd.venvs.spec import VenvSpec

METADATA = "xinfd-venv.json"
MANIFEST = "xinfd-manifest.json"
METADATA_FORMAT = 1
_LOCK_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class VenvPaths:
    """The paths of one spec's venv."""

    group: Path  # .../v4/{model}/{engine}
    python_version: str
    digest: str

    @property
    def name(self) -> str:
        return f"{self.python_version}-{self.digest}"

    @property
    def published(self) -> Path:
        return self.group / self.name

    @property
    def current(self) -> Path:
        return self.group / self.python_version

    @property
    def lock(self) -> Path:
        return self.group / f".{self.name}.lock"

    def build_dir(self) -> Path:
        return self.group / f".build-{self.name}-{os.getpid()}-{os.urandom(4).hex()}"


def venv_root(home: Path) -> Path:
    return home / "virtualenv" / "v4"


def paths_for(home: Path, spec: VenvSpec) -> VenvPaths:
    return VenvPaths(venv_root(home) / spec.model_name / spec.engine, spec.python_version, spec.digest())


class FileLock:
    """An exclusive ``flock`` on one file, acquired by polling so that waiting stays cancellable.

    The kernel drops it when the holder dies (SIGKILL included): a crashed build never blocks the next one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        self._fd = fd
        return True

    async def acquire(self) -> None:
        while not self.try_acquire():
            await asyncio.sleep(_LOCK_POLL_S)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def write_json_atomic(path: Path, data: Any, *, indented: bool = True) -> None:
    """``data`` as JSON through ``write_atomic``: readers see the old or the new content, never a torn one.

    The file is readable as ``open()`` would create it (``DEFAULT``, narrowed by the umask): venv metadata
    and build records are not secrets. ``indented=False`` for large records nobody reads by eye (a venv's file
    manifest): json's C encoder writes only unindented JSON (its Python one, with the keys sorted, took 40 ms
    of a 0.5 s build), and nobody needs the entries in order.
    """
    text = json.dumps(data, indent=1, sort_keys=True) if indented else json.dumps(data, separators=(",", ":"))
    write_atomic(path, text, mode=DEFAULT)


def read_metadata(venv: Path) -> dict[str, Any] | None:
    """The venv's metadata, or None when it is missing or not ours (such a venv is never used)."""
    try:
        data = json.loads((venv / METADATA).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != METADATA_FORMAT:
        return None
    return data


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python*/site-packages"))
    return found[0] if found else venv / "lib" / "site-packages"


def _pyvenv_digest(venv: Path) -> str:
    try:
        return hashlib.sha256((venv / "pyvenv.cfg").read_bytes()).hexdigest()
    except OSError:
        return ""


def manifest(venv: Path) -> dict[str, Any]:
    """Size and mtime of every file the venv's own site-packages holds, and ``pyvenv.cfg``'s hash (recorded at
    build time, compared at reuse: a changed, truncated or touched file shows, for the cost of a stat)."""
    return {"format": 2, "files": _file_stats(site_packages(venv)), "pyvenv_cfg": _pyvenv_digest(venv)}


def _file_stats(root: Path) -> dict[str, list[int]]:
    """relative path -> [size, mtime_ns] of every file under ``root``, ``__pycache__`` left out; symlinks to
    directories are neither followed nor listed (``os.walk``'s rule). ``os.scandir`` with relative names built
    on the way down: a build records thousands of files, and ``os.walk`` + ``os.path.relpath`` took 3x longer."""
    files: dict[str, list[int]] = {}
    pending = [("", str(root))]
    while pending:
        prefix, directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.is_dir():
                    if not entry.is_symlink() and entry.name != "__pycache__":
                        pending.append((f"{prefix}{entry.name}/", entry.path))
                    continue
                st = entry.stat(follow_symlinks=False)
                files[prefix + entry.name] = [st.st_size, st.st_mtime_ns]
    return files


def verify(venv: Path, digest: str) -> str | None:
    """Why the published venv cannot be used (``None``: it is intact). Cheap: stats and one small file hash,
    no interpreter start; ``verify_records`` is the full content check (``xinfctl venv list --verify``)."""
    meta = read_metadata(venv)
    if meta is None:
        return f"{venv} has no valid {METADATA}"
    if meta.get("digest") != digest:
        return f"{venv} records digest {meta.get('digest')!r}, expected {digest!r}"
    if not os.access(venv / "bin" / "python", os.X_OK):
        return f"{venv}/bin/python is missing or not executable (was its base interpreter removed?)"
    try:
        recorded = json.loads((venv / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"{venv} has no valid {MANIFEST}"
    if not isinstance(recorded, dict):
        return f"{venv} has no valid {MANIFEST}"
    if recorded.get("format") == 2:
        if _pyvenv_digest(venv) != recorded.get("pyvenv_cfg"):
            return f"{venv}/pyvenv.cfg changed since the build"
        files = recorded.get("files", {})
    else:  # a venv built before mtimes were recorded: sizes only
        files = {rel: [size, None] for rel, size in recorded.items()}
    # Plain strings, not Path objects: building a Path per file cost more than the lstat itself, and this loop
    # is most of a cached relaunch's venv step (one lstat per installed file).
    root = str(site_packages(venv)) + os.sep
    lstat = os.lstat
    for rel, (size, mtime_ns) in files.items():
        try:
            st = lstat(root + rel)
        except OSError:
            return f"{rel} is missing from {venv}"
        if st.st_size != size:
            return f"{rel} in {venv} changed size ({size} -> {st.st_size} bytes)"
        if mtime_ns is not None and st.st_mtime_ns != mtime_ns:
            return f"{rel} in {venv} was modified after the build"
    return None


def verify_records(venv: Path) -> list[str]:
    """Files of the venv's installed distributions whose content differs from their ``RECORD`` hash (PEP 376/
    627: ``path,sha256=<urlsafe b64>,size``), as "dist: path (reason)"; empty when all match. Reads every file:
    the full check, not the per-launch one."""
    root = site_packages(venv)
    problems: list[str] = []
    for record in sorted(root.glob("*.dist-info/RECORD")):
        dist = record.parent.name.removesuffix(".dist-info")
        try:
            rows = list(csv.reader(record.read_text(errors="replace").splitlines()))
        except (OSError, csv.Error) as exc:
            problems.append(f"{dist}: RECORD unreadable ({exc})")
            continue
        for row in rows:
            if len(row) < 2 or not row[1]:
                continue  # RECORD itself, .pyc files: no hash by design
            algorithm, _, expected = row[1].partition("=")
            path = (root / row[0]).resolve()
            try:
                data = path.read_bytes()
            except OSError:
                problems.append(f"{dist}: {row[0]} (missing)")
                continue
            try:
                actual = hashlib.new(algorithm, data).digest()
            except ValueError:
                continue  # an algorithm this Python lacks: not evidence of damage
            if base64.urlsafe_b64encode(actual).rstrip(b"=").decode() != expected:
                problems.append(f"{dist}: {row[0]} (content differs from RECORD)")
    return problems


def retire(path: Path) -> Path:
    """Rename ``path`` to a ``.trash-*`` name beside it (atomic); the caller deletes that later."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}-{os.urandom(4).hex()}")
    os.rename(path, trash)
    return trash


def remove_tree(path: Path) -> None:
    """Rename away first (atomic: nothing half-deleted is ever seen under a published name), then delete."""
    if not path.exists() and not path.is_symlink():
        return
    shutil.rmtree(retire(path), ignore_errors=True)


def set_current(paths: VenvPaths) -> None:
    """Point ``{python_version}`` at this digest's venv: new symlink beside, then ``os.replace`` (atomic)."""
    tmp = paths.group / f".{paths.python_version}.link-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(paths.name, tmp)
    os.replace(tmp, paths.current)


def iter_groups(home: Path) -> Iterator[Path]:
    root = venv_root(home)
    if not root.is_dir():
        return
    for model in sorted(root.iterdir()):
        if model.is_dir() and not model.is_symlink():
            for engine in sorted(model.iterdir()):
                if engine.is_dir() and not engine.is_symlink():
                    yield engine


def published_venvs(group: Path) -> Iterator[Path]:
    for entry in sorted(group.iterdir()):
        if not entry.name.startswith(".") and not entry.is_symlink() and entry.is_dir():
            yield entry


def _lock_name_of(entry: Path) -> str | None:
    """``.build-{pyver}-{digest}-{pid}-{token}`` -> ``{pyver}-{digest}``."""
    parts = entry.name.removeprefix(".build-").rsplit("-", 2)
    return parts[0] if len(parts) == 3 else None


def clean_leftovers(home: Path) -> list[Path]:
    """Remove crash leftovers: trash, and build dirs whose lock nobody holds. Returns what was removed."""
    removed: list[Path] = []
    for group in iter_groups(home):
        for entry in sorted(group.iterdir()):
            if entry.name.startswith(".trash-"):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
            elif entry.name.startswith(".build-"):
                name = _lock_name_of(entry)
                lock = FileLock(group / f".{name}.lock") if name else None
                if lock is None or lock.try_acquire():
                    try:
                        shutil.rmtree(entry, ignore_errors=True)
                        removed.append(entry)
                    finally:
                        if lock is not None:
                            lock.release()
            elif entry.name.startswith(".") and ".link-" in entry.name:
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def disk_usage(path: Path) -> int:
    """Bytes on disk, each inode counted once (uv hardlinks files from its cache)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def describe(venv: Path, meta: dict[str, Any] | None, *, current: bool) -> dict[str, Any]:
    """One row of ``venv list``."""
    meta = meta or {}
    try:
        last_used = (venv / METADATA).stat().st_mtime
    except OSError:
        last_used = None
    return {
        "path": str(venv),
        "model_name": meta.get("model_name", venv.parent.parent.name),
        "model_engine": meta.get("engine", venv.parent.name),
        "python_version": meta.get("python_version", venv.name.rsplit("-", 1)[0]),
        "python": meta.get("python"),
        "bundled": meta.get("bundled", []),
        "digest": meta.get("digest"),
        "current": current,
        "valid": bool(meta),
        "packages": len(meta.get("freeze", [])),
        "requirements": meta.get("requirements", []),
        "size_bytes": disk_usage(venv),
        "created": meta.get("created"),
        "last_used": last_used,
        "uv_version": meta.get("uv_version"),
    }


def touch(venv: Path) -> None:
    """Record a use (the metadata file's mtime is "last used"; its content never changes after publishing)."""
    with contextlib.suppress(OSError):
        now = time.time()
        os.utime(venv / METADATA, (now, now))
