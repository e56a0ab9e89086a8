"""The private directory of replica sockets: owned by the daemon's user, mode 0700, removed on stop.

A replica socket bypasses API keys (the daemon trusts whatever answers on it), so whoever can create a file in
its directory can answer clients' prompts. The directory is therefore one of:

1. ``<home>/run`` when its socket paths fit in ``sun_path`` (the usual case);
2. systemd's ``$RUNTIME_DIRECTORY`` (``RuntimeDirectory=xinfd`` in the unit) or ``$XDG_RUNTIME_DIR/xinfd-<hash>``
   when short enough, and only if that runtime directory is itself owned by us and closed to others;
3. otherwise a fresh ``tempfile.mkdtemp`` directory, which no other user can have created first: its name is
   random and ``mkdtemp`` fails rather than reuse an existing one.

A directory that is reused (1 and 2) is checked with ``lstat``: a symlink, a non-directory, another owner or a
mode open to group or others stops the daemon with a message naming the directory, instead of serving through
a socket someone else may have put there. Sockets left by a crashed run are removed at start; at stop the
sockets go, and a temporary directory goes entirely. The path of a temporary directory is recorded in the home
(``run.tmpdir``), so the next start removes one a ``kill -9`` left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from xinfd.errors import XinfdError

log = logging.getLogger(__name__)

# Longest ``<label>.sock`` name we allow for: a 64-character uid, "-r", a 3-digit index, ".sock", with margin.
SOCKET_NAME_ROOM = 80
# sun_path is 108 bytes on Linux, 104 on macOS: stay under the smaller.
SUN_PATH_MAX = 104
TMPDIR_RECORD = "run.tmpdir"


class UnsafeRuntimeDirError(XinfdError):
    """A directory the daemon would put replica sockets in is not private to the daemon's user."""

    code = "unsafe_runtime_dir"
    status = 500


def fits(directory: Path) -> bool:
    """Whether every replica socket name fits under ``directory`` within the Unix socket path limit."""
    return len(str(directory)) + 1 + SOCKET_NAME_ROOM <= SUN_PATH_MAX


def check_private(path: Path) -> None:
    """Raise ``UnsafeRuntimeDirError`` unless ``path`` is a real directory of ours that only we can use."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeRuntimeDirError(f"runtime directory {path} is a symlink; refusing to put replica sockets there")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeRuntimeDirError(f"runtime directory {path} is not a directory")
    if info.st_uid != os.geteuid():
        raise UnsafeRuntimeDirError(
            f"runtime directory {path} is owned by uid {info.st_uid}, not by the daemon's uid {os.geteuid()}; "
            "another user may have created it: remove it or choose another XINFERENCE_HOME"
        )
    if info.st_mode & 0o077:
        raise UnsafeRuntimeDirError(
            f"runtime directory {path} has mode {stat.S_IMODE(info.st_mode):04o}; it must be 0700 "
            "(no access for group or others)"
        )


def private_directory(path: Path) -> Path:
    """Create ``path`` with mode 0700 (its parents as needed), or check the one that exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o077)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    finally:
        os.umask(old_umask)
    check_private(path)
    return path


def _usable_base(path: Path) -> bool:
    """A base runtime directory (systemd's or XDG's) we may create ours in: ours, and closed to others."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o022


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeDir:
    """The replica socket directory of one daemon run."""

    path: Path
    temporary: bool  # made with mkdtemp: removed entirely at stop
    record: Path | None = None  # where a temporary directory's path is recorded for the next start

    @classmethod
    def prepare(cls, home: Path, env: Mapping[str, str] = os.environ) -> RuntimeDir:
        """Choose, create or check the directory; remove what an earlier run left. Raises
        ``UnsafeRuntimeDirError`` naming a reused directory that is not private."""
        record = home / TMPDIR_RECORD
        _remove_recorded(record)
        for candidate in _candidates(home, env):
            if fits(candidate):
                runtime = cls(path=private_directory(candidate), temporary=False)
                runtime.remove_sockets()
                return runtime
        path = Path(tempfile.mkdtemp(prefix=f"xinfd-{os.geteuid()}-"))  # mode 0700, a fresh name
        with contextlib.suppress(OSError):
            home.mkdir(parents=True, exist_ok=True)
            record.write_text(str(path) + "\n", encoding="utf-8")
        log.info("replica sockets in %s (the home's own run directory would exceed the socket path limit)", path)
        return cls(path=path, temporary=True, record=record)

    def remove_sockets(self) -> None:
        """Remove sockets left in the directory (a crashed run's; replicas recreate theirs)."""
        with contextlib.suppress(OSError):
            for entry in self.path.iterdir():
                if entry.is_socket() or entry.is_symlink():
                    with contextlib.suppress(OSError):
                        entry.unlink()

    def cleanup(self) -> None:
        """At stop: remove the sockets; a temporary directory and its record go too."""
        self.remove_sockets()
        if self.temporary:
            _remove_tree(self.path)
            if self.record is not None:
                with contextlib.suppress(OSError):
                    self.record.unlink()


def _candidates(home: Path, env: Mapping[str, str]) -> list[Path]:
    found = [home / "run"]
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:12]
    systemd = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if systemd and _usable_base(Path(systemd)):
        found.append(Path(systemd) / digest)
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg and Path(xdg).is_absolute() and _usable_base(Path(xdg)):
        found.append(Path(xdg) / f"xinfd-{digest}")
    return found


def _remove_recorded(record: Path) -> None:
    """Remove the temporary directory an earlier run recorded, if it is still ours."""
    try:
        leftover = Path(record.read_text(encoding="utf-8").strip())
    except OSError:
        return
    try:
        check_private(leftover)
    except (OSError, UnsafeRuntimeDirError):
        pass  # gone already, or not ours (then never touched)
    else:
        log.info("removing runtime directory %s left by an earlier run", leftover)
        _remove_tree(leftover)
    with contextlib.suppress(OSError):
        record.unlink()


def _remove_tree(path: Path) -> None:
    """Remove a runtime directory: it holds only sockets (flat), so no recursion is needed."""
    with contextlib.suppress(OSError):
        for entry in path.iterdir():
            with contextlib.suppress(OSError):
                entry.unlink()
    with contextlib.suppress(OSError):
        path.rmdir()
