"""Logging: one line per event, no timestamps under journald, per-replica log files with rotation.

Replicas write their stdout and stderr straight into ``$XINFERENCE_HOME/logs/UID-rN.log`` (no pipe through the
daemon, see ``xinfd.processes``), opened with O_APPEND. So rotation is "copy, then truncate" (logrotate's
copytruncate): the child keeps its descriptor, and after the truncation its appends land at the new, small
end of the same file. The window between copy and truncate may lose a few lines of a very chatty replica; that
is the price of not relaying every byte through the daemon's event loop.

``follow()`` is what ``xinfctl logs --follow`` reads through the control API: it notices truncation (a
rotation) and starts again from the top of the fresh file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

ROTATE_CHECK_SECONDS = 5.0


def configure_logging(
    level: str,
    env: Mapping[str, str] | None = None,
    *,
    log_file: Path | None = None,
    max_bytes: int = 10 * 1024 * 1024,
    backups: int = 3,
) -> None:
    """Log to stderr (journald adds its own timestamps when ``JOURNAL_STREAM`` is set) and, if given, a file.

    The file always has timestamps: it is read without journald's metadata.
    """
    env = os.environ if env is None else env
    if env.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    if log_file is not None:
        from logging.handlers import RotatingFileHandler  # only with a log file: the idle daemon's memory

        log_file.parent.mkdir(parents=True, exist_ok=True)
        to_file = RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.handlers.append(to_file)
    root.setLevel(level)
    # aiohttp's access log is one line per request: useful at DEBUG, noise at INFO.
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)


def rotate_if_needed(path: Path, *, max_bytes: int, backups: int) -> bool:
    """Rotate ``path`` (copy to ``.1``, shift older ones, truncate in place) if it exceeds ``max_bytes``."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for n in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
    first = path.with_name(f"{path.name}.1")
    tmp = path.with_name(f".{path.name}.1.tmp")
    shutil.copyfile(path, tmp)
    os.replace(tmp, first)  # a reader never sees a half-copied .1
    with path.open("r+b") as fh:
        fh.truncate(0)
    return True


def rotate_dir(directory: Path, *, max_bytes: int, backups: int) -> list[Path]:
    """Rotate every ``*.log`` in ``directory`` that is too large; returns the rotated files."""
    rotated = []
    for path in sorted(directory.glob("*.log")):
        try:
            if rotate_if_needed(path, max_bytes=max_bytes, backups=backups):
                rotated.append(path)
        except OSError as exc:
            log.warning("cannot rotate %s: %s", path, exc)
    return rotated


async def rotate_forever(
    directory: Path, *, max_bytes: int, backups: int, interval: float = ROTATE_CHECK_SECONDS
) -> None:
    """The daemon's rotation task: a stat per log file every ``interval`` seconds."""
    while True:
        await asyncio.sleep(interval)
        for path in await asyncio.to_thread(rotate_dir, directory, max_bytes=max_bytes, backups=backups):
            log.info("rotated %s (over %d bytes)", path, max_bytes)


def tail(path: Path, lines: int, *, max_bytes: int = 1024 * 1024) -> bytes:
    """The last ``lines`` lines of ``path`` (reading at most ``max_bytes`` from its end)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except FileNotFoundError:
        return b""
    if lines <= 0:
        return b""
    kept = data.splitlines(keepends=True)[-lines:]
    return b"".join(kept)


async def follow(path: Path, *, start: int | None = None, poll: float = 0.25) -> AsyncIterator[bytes]:
    """New bytes of ``path`` as they are appended, forever; restarts at 0 when the file shrinks (rotation)."""
    offset = start
    while True:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if offset is None:
            offset = size
        if size < offset:
            offset = 0  # truncated by rotation: the fresh content is at the top
        if size > offset:
            with contextlib.suppress(FileNotFoundError):
                with path.open("rb") as fh:
                    fh.seek(offset)
                    chunk = fh.read(min(size - offset, 1024 * 1024))
                offset += len(chunk)
                if chunk:
                    yield chunk
                    continue
        await asyncio.sleep(poll)
