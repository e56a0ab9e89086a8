"""Orphan cleanup through pid files (real process groups) and the atomic desired-state file."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xinfd.orphans import kill_orphans, pid_dir, process_start_time, remove_pid_file, write_pid_file
from xinfd.supervisor.desired_state import DesiredState


def alive(pid: int) -> bool:
    return process_start_time(pid) is not None


def members(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid and alive(int(entry)):
                    found.append(int(entry))
            except ProcessLookupError:
                pass
    return found


@pytest.fixture
def groups() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:  # whatever a failed test left behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait()


def spawn_group(groups: list[subprocess.Popen[bytes]], script: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    groups.append(proc)
    return proc


def test_kill_orphans_kills_a_live_group_with_its_grandchildren(
    tmp_path: Path, groups: list[subprocess.Popen[bytes]]
) -> None:
    proc = spawn_group(groups, "sleep 60 & sleep 60")
    write_pid_file(pid_dir(tmp_path) / "echo-r0.pid", proc.pid)
    deadline = time.monotonic() + 5
    while len(members(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(members(proc.pid)) >= 2  # sh, its background sleep (and the foreground one)
    killed = kill_orphans(tmp_path)
    assert killed == [f"echo-r0: killed replica group {proc.pid}"]
    proc.wait()
    assert members(proc.pid) == []
    assert list(pid_dir(tmp_path).iterdir()) == []


def test_kill_orphans_kills_leftovers_whose_leader_is_gone(
    tmp_path: Path, groups: list[subprocess.Popen[bytes]]
) -> None:
    proc = spawn_group(groups, "sleep 60 & exit 0")
    write_pid_file(pid_dir(tmp_path) / "echo-r1.pid", proc.pid)
    proc.wait()  # the leader is reaped; its background sleep stays in the group
    assert len(members(proc.pid)) == 1
    assert kill_orphans(tmp_path) == [f"echo-r1: killed leftover processes of replica group {proc.pid}"]
    assert members(proc.pid) == []


def test_a_reused_pid_is_left_alone(tmp_path: Path, groups: list[subprocess.Popen[bytes]]) -> None:
    proc = spawn_group(groups, "sleep 60")
    path = pid_dir(tmp_path) / "old-r0.pid"
    path.parent.mkdir()
    start = process_start_time(proc.pid)
    assert start is not None
    path.write_text(json.dumps({"pgid": proc.pid, "start_time": start - 1}))  # another process, same pid
    assert kill_orphans(tmp_path) == []
    assert alive(proc.pid) and not path.exists()


def test_unreadable_or_dangerous_pid_files_are_dropped(tmp_path: Path) -> None:
    directory = pid_dir(tmp_path)
    directory.mkdir()
    (directory / "junk.pid").write_text("{not json")
    (directory / "init.pid").write_text(json.dumps({"pgid": 1, "start_time": None}))
    (directory / "me.pid").write_text(json.dumps({"pgid": os.getpgid(0), "start_time": None}))
    assert kill_orphans(tmp_path) == []
    assert list(directory.iterdir()) == []
    remove_pid_file(directory / "absent.pid")  # idempotent
    assert kill_orphans(tmp_path / "nowhere") == []


def test_desired_state_round_trips_and_is_replaced_atomically(tmp_path: Path) -> None:
    state = DesiredState(tmp_path)
    assert state.load() == []
    models = [
        {"model_uid": "a", "model_name": "echo", "replica": 2},
        {"model_uid": "b", "model_name": "echo"},
    ]
    state.save(models)
    assert state.load() == models
    state.save(models[:1])
    assert state.load() == models[:1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temp file left behind
    assert json.loads(state.path.read_text())["version"] == 1


@pytest.mark.parametrize(
    "content", ["{half", '{"version": 99, "models": []}', '{"version": 1, "models": [{}]}']
)
def test_a_corrupt_state_file_is_moved_aside_and_the_daemon_starts_empty(
    tmp_path: Path, content: str
) -> None:
    state = DesiredState(tmp_path)
    state.path.write_text(content)
    assert state.load() == []
    assert (tmp_path / "state.json.corrupt").read_text() == content
    assert not state.path.exists()
