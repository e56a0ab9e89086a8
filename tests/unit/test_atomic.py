"""``write_atomic``: the old content survives any failure, no temp file is left, data and rename are fsynced."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from xinfd.atomic import DEFAULT, PRIVATE, write_atomic


def test_writes_str_as_utf8_and_bytes_as_is(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_atomic(target, "caf\u00e9\n")
    assert target.read_bytes() == "caf\u00e9\n".encode()
    write_atomic(target, b"\x00\xff")
    assert target.read_bytes() == b"\x00\xff"
    assert os.listdir(tmp_path) == ["state.json"]


def test_replace_failing_keeps_the_old_content_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash between write and replace")

    monkeypatch.setattr("xinfd.atomic.os.replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_write_failing_keeps_the_old_content_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("xinfd.atomic.os.fsync", full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_interrupt_also_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt (or task cancellation) mid-write is not an OSError; the temp file still goes."""
    target = tmp_path / "state.json"

    def interrupted(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("xinfd.atomic.os.replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, "new")
    assert os.listdir(tmp_path) == []


def test_file_and_directory_are_fsynced_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr("xinfd.atomic.os.fsync", fsync)
    monkeypatch.setattr("xinfd.atomic.os.replace", replace)
    write_atomic(tmp_path / "f", "x")
    assert events == ["fsync file", "replace", "fsync dir"]


def test_directory_fsync_failure_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Some filesystems refuse fsync on a directory; the write itself has succeeded by then."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr("xinfd.atomic.os.fsync", fsync)
    write_atomic(tmp_path / "f", "x")
    assert (tmp_path / "f").read_text() == "x"


def test_missing_directory_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "absent" / "f", "x")
    assert not (tmp_path / "absent").exists()


def test_modes(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "private", "x")
        write_atomic(tmp_path / "shared", "x", mode=DEFAULT)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == PRIVATE
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o644


def test_replacing_keeps_the_new_mode_not_the_old(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("old")
    target.chmod(0o666)
    write_atomic(target, "new")
    assert stat.S_IMODE(target.stat().st_mode) == PRIVATE


def test_temp_names_never_match_the_globs_of_real_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real_replace = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        seen.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr("xinfd.atomic.os.replace", replace)
    write_atomic(tmp_path / "echo-r0.pid", "{}")
    write_atomic(tmp_path / "family.json", "{}")
    assert all(name.startswith(".") and name.endswith(".tmp") for name in seen), seen


# -- every place that writes state goes through write_atomic ------------------------------------------------


def _state(tmp_path: Path) -> Path:
    from xinfd.supervisor.desired_state import DesiredState

    state = DesiredState(tmp_path)
    state.save([{"model_uid": "a", "model_name": "echo"}])
    return state.path


def _registration(tmp_path: Path) -> Path:
    from xinfd.registry import ModelRegistry

    registry = ModelRegistry(tmp_path / "registrations", builtin_dir=tmp_path / "none")
    registry.register({"name": "mine", "abilities": ["chat"], "engines": ["echo"]}, {})
    return tmp_path / "registrations" / "mine.json"


def _venv_metadata(tmp_path: Path) -> Path:
    from xinfd.venvs.cache import write_json_atomic

    write_json_atomic(tmp_path / "xinfd-venv.json", {"format": 1})
    return tmp_path / "xinfd-venv.json"


def _pid_file(tmp_path: Path) -> Path:
    from xinfd.orphans import write_pid_file

    write_pid_file(tmp_path / "pids" / "echo-r0.pid", os.getpid())
    return tmp_path / "pids" / "echo-r0.pid"


def _download_marker(tmp_path: Path) -> Path:
    from xinfd import downloads

    downloads._write_marker(tmp_path, tmp_path, source="huggingface", repo_id="a/b")
    return tmp_path / downloads.MARKER


@pytest.mark.parametrize("write", [_state, _registration, _venv_metadata, _pid_file, _download_marker])
def test_state_writers_are_atomic_and_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: object
) -> None:
    assert callable(write)
    synced: list[bool] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr("xinfd.atomic.os.fsync", fsync)
    path = write(tmp_path)
    assert isinstance(path, Path) and path.is_file()
    assert synced == [False, True]  # the file, then its directory
    before = path.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash")

    monkeypatch.setattr("xinfd.atomic.os.replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        write(tmp_path)
    assert path.read_bytes() == before
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
