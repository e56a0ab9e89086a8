"""Per-replica log rotation (copytruncate) and following across a rotation."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from xinfd.logs import configure_logging, follow, rotate_dir, rotate_if_needed, tail


def test_rotation_keeps_the_writer_appending_to_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "echo-r0.log"
    # The replica's descriptor, opened with O_APPEND like the spawner's, stays open across rotations.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for generation in range(4):
            os.write(fd, f"generation {generation}\n".encode() * 100)
            assert rotate_if_needed(path, max_bytes=1000, backups=2)
        os.write(fd, b"after rotation\n")
    finally:
        os.close(fd)
    assert path.read_bytes() == b"after rotation\n"  # small again, and the writer's line is at the top
    assert b"generation 3" in (tmp_path / "echo-r0.log.1").read_bytes()
    assert b"generation 2" in (tmp_path / "echo-r0.log.2").read_bytes()
    assert not (tmp_path / "echo-r0.log.3").exists()  # only `backups` old files are kept
    assert not rotate_if_needed(path, max_bytes=1000, backups=2)


def test_rotate_dir_touches_only_large_logs(tmp_path: Path) -> None:
    (tmp_path / "big.log").write_bytes(b"x" * 5000)
    (tmp_path / "small.log").write_bytes(b"y" * 10)
    (tmp_path / "notes.txt").write_bytes(b"z" * 5000)
    assert rotate_dir(tmp_path, max_bytes=4096, backups=3) == [tmp_path / "big.log"]
    assert (tmp_path / "big.log").stat().st_size == 0 and (tmp_path / "notes.txt").stat().st_size == 5000


def test_tail_returns_the_last_lines(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"".join(f"line {i}\n".encode() for i in range(100)))
    assert tail(path, 2) == b"line 98\nline 99\n"
    assert tail(path, 0) == b"" and tail(tmp_path / "missing.log", 5) == b""


async def test_follow_sees_appends_and_restarts_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "r.log"
    path.write_bytes(b"old\n")
    got: list[bytes] = []

    async def reader() -> None:
        async for chunk in follow(path, poll=0.01):
            got.append(chunk)

    task = asyncio.create_task(reader())
    try:
        await asyncio.sleep(0.05)
        with path.open("ab") as fh:
            fh.write(b"new 1\n" * 200)
        await _until(lambda: b"".join(got).count(b"new 1") == 200)
        rotate_if_needed(path, max_bytes=100, backups=1)
        with path.open("ab") as fh:
            fh.write(b"fresh\n")
        await _until(lambda: b"fresh\n" in b"".join(got))
        assert b"old" not in b"".join(got)  # follow starts at the end, as tail -f
    finally:
        task.cancel()


async def _until(predicate: object, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


def test_journald_lines_have_no_timestamp_but_the_file_does(tmp_path: Path, capsys: object) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", {"JOURNAL_STREAM": "8:1234"}, log_file=tmp_path / "logs" / "xinfd.log")
        logging.getLogger("xinfd.test").info("one event")
        err = capsys.readouterr().err  # type: ignore[attr-defined]
        assert err == "INFO xinfd.test: one event\n"
        written = (tmp_path / "logs" / "xinfd.log").read_text()
        assert written.endswith("INFO xinfd.test: one event\n") and written[:4].isdigit()
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], level = saved
        root.setLevel(level)
