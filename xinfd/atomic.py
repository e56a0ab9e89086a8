"""Replace a file's content atomically and durably: readers see the old content or the new, never a mix.

Every file that records state (``state.json``, user model registrations, venv metadata, replica pid files,
the download marker) is written through ``write_atomic``:

1. a temp file is created in the same directory (``os.replace`` is atomic only within one filesystem),
2. the data is written and the file fsynced (so the rename cannot reach the disk before the data does),
3. ``os.replace`` puts it in place,
4. the directory is fsynced (the rename itself is durable only once the directory entry is on disk).

A failure at any step leaves the old file untouched and removes the temp file. The parent directory is not
created here: a missing one is the caller's decision (and a ``FileNotFoundError``), as it is for ``open()``.
Directory publication (a built venv, a converted-weights folder) is a different operation: a rename of a
directory built beside its final place, done where it happens.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

# Permission bits of a file only the daemon's user may read (the umask may remove more, never add).
PRIVATE = 0o600
# What ``open(path, "w")`` creates: read-write for all, narrowed by the umask.
DEFAULT = 0o666
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_NAME_ATTEMPTS = 100


def write_atomic(path: Path | str, data: bytes | str, *, mode: int = PRIVATE) -> None:
    """Replace ``path`` with ``data`` (``str`` is written as UTF-8) atomically and durably.

    :param path: the file to replace; its directory must exist.
    :param data: the complete new content.
    :param mode: permission bits of the new file, narrowed by the umask as ``open()`` does; ``PRIVATE``
        (0o600) by default, ``DEFAULT`` (0o666) for what a plain ``open(path, "w")`` would create.
    :raises OSError: whatever the filesystem raised; the old file is then still in place and no temp file
        is left behind.
    """
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = _create_temp(target, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(target.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable; filesystems that cannot fsync a directory are skipped."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _create_temp(target: Path, mode: int) -> tuple[int, Path]:
    """A new hidden file beside ``target``; ``O_EXCL`` so two writers never share one temp file.

    The name ends in ``.tmp``, so globs for the real files (``*.json``, ``*.pid``) never see it.
    """
    for _ in range(_NAME_ATTEMPTS):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, _OPEN_FLAGS, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp name beside {target} after {_NAME_ATTEMPTS} attempts")
