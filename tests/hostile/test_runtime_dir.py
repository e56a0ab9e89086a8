"""A local user attacks the replica socket directory: squatting the predictable name, pre-creating the home's
run directory, and looking for leftovers after the daemon stopped."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.conftest import Daemon, daemon_env, launch_echo, request, wait_for

NOBODY = 65534


def _as_nobody(path: Path, mode: int = 0o777) -> None:
    path.mkdir()
    os.chown(path, NOBODY, NOBODY)
    os.chmod(path, mode)


@pytest.fixture
def short_home() -> Iterator[Path]:
    """A home short enough that ``<home>/run`` holds replica sockets itself (a tmp_path is too long)."""
    home = Path(tempfile.mkdtemp(prefix="xh", dir="/tmp"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


def _run_dirs(daemon: Daemon) -> set[Path]:
    return {Path(r["socket"]).parent for m in daemon.xinfctl_json("list") for r in m["replicas"]}


class _FakeReplica:
    """What a squatter would put where a replica socket goes: a server answering every prompt itself."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o777)
        self.sock.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        body = b'{"choices": [{"text": "pwned"}]}'
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
            conn.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a directory as another user needs root")
def test_a_squatted_predictable_directory_is_never_used(make_daemon: Any) -> None:
    daemon = make_daemon()  # a tmp_path home is long: its own run directory would not fit in sun_path
    assert len(str(daemon.home / "run")) + 81 > 104
    squatted = Path(tempfile.gettempdir()) / (
        f"xinfd-{os.getuid()}-{hashlib.sha256(str(daemon.home).encode()).hexdigest()[:12]}"
    )
    shutil.rmtree(squatted, ignore_errors=True)
    _as_nobody(squatted)
    fake = _FakeReplica(squatted / "echo-r0.sock")
    try:
        daemon.start()
        launch_echo(daemon)
        (run_dir,) = _run_dirs(daemon)
        assert run_dir != squatted
        info = run_dir.lstat()
        assert info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) == 0o700
        status, _, body = request(daemon, "POST", "/v1/completions", {"model": "echo", "prompt": "mine"})
        assert status == 200 and b"pwned" not in body and b"mine" in body
        assert daemon.stop() == 0
        assert not run_dir.exists()  # removed on stop
    finally:
        fake.sock.close()
        shutil.rmtree(squatted, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a directory as another user needs root")
def test_a_run_directory_made_by_another_user_stops_the_start(short_home: Path) -> None:
    _as_nobody(short_home / "run")
    daemon = Daemon(home=short_home, socket=short_home / "xinfd.sock", env=daemon_env(short_home))
    daemon.start(wait=False)
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=30) == 1
    assert f"runtime directory {short_home / 'run'} is owned by uid {NOBODY}" in daemon.log()


def test_a_run_directory_open_to_others_stops_the_start(short_home: Path) -> None:
    (short_home / "run").mkdir(mode=0o755)
    os.chmod(short_home / "run", 0o777)
    daemon = Daemon(home=short_home, socket=short_home / "xinfd.sock", env=daemon_env(short_home))
    daemon.start(wait=False)
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=30) == 1
    assert f"runtime directory {short_home / 'run'} has mode 0777" in daemon.log()


def test_the_home_run_directory_is_private_and_stale_sockets_go(short_home: Path) -> None:
    run = short_home / "run"
    run.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(run / "echo-r0.sock"))
    stale.close()
    daemon = Daemon(home=short_home, socket=short_home / "xinfd.sock", env=daemon_env(short_home))
    try:
        daemon.start()
        assert not (run / "echo-r0.sock").exists()  # a crashed run's socket is gone before anything launches
        launch_echo(daemon)
        assert _run_dirs(daemon) == {run}
    finally:
        assert daemon.stop() == 0
    assert list(run.iterdir()) == []  # no socket left behind


def test_a_temporary_directory_left_by_a_crash_is_removed_at_the_next_start(make_daemon: Any) -> None:
    daemon = make_daemon().start()
    launch_echo(daemon)
    (first,) = _run_dirs(daemon)
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    assert first.exists()  # a kill -9 cleans nothing up
    daemon.start()
    wait_for(lambda: not first.exists(), timeout=10)
