"""Fork servers end to end: a real daemon, the transformers engine, a tiny random model, the openai SDK.

CPU replicas of the transformers engine fork from a process that imported torch and transformers once
(``xinfd.forkserver``). These tests check what an operator would: the replicas are children of one server,
they answer like exec'd replicas, they get their own thread budget, a crash of a replica or of the server
is supervised like any crash, and nothing is left after the daemon stops.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.integration.conftest import Daemon, pid_alive, proc_info, wait_for
from tests.unit.engines.tiny_models import build_tiny_llama

pytest.importorskip("transformers")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def register_tiny(daemon: Daemon, tmp_path: Path, name: str = "tiny") -> None:
    folder = build_tiny_llama(tmp_path / name)
    spec = {"name": name, "abilities": ["chat", "generate"], "engines": ["transformers"], "context_length": 512,
            "extra": {"model_path": str(folder)}}
    (tmp_path / f"{name}.json").write_text(json.dumps(spec))
    daemon.xinfctl("register", "--file", str(tmp_path / f"{name}.json"))


def parent(pid: int) -> int:
    info = proc_info(pid)
    assert info is not None, f"pid {pid} is gone"
    return info.ppid


def fork_servers(daemon: Daemon) -> list[int]:
    """The daemon's children that run ``python -m xinfd.forkserver``."""
    found = []
    for info in daemon.processes():
        cmdline = Path(f"/proc/{info.pid}/cmdline").read_bytes().split(b"\0") if pid_alive(info.pid) else []
        if info.ppid == daemon.pid and b"xinfd.forkserver" in cmdline:
            found.append(info.pid)
    return found


def replica_pids(daemon: Daemon, uid: str = "tiny") -> list[int]:
    return [r["pid"] for m in daemon.xinfctl_json("list") if m["model_uid"] == uid for r in m["replicas"]
            if r["pid"] and r["state"] == "READY"]


def answer(daemon: Daemon, uid: str = "tiny") -> str:
    api = openai.OpenAI(base_url=daemon.endpoint + "/v1", api_key="none", max_retries=0, timeout=120)
    done = api.completions.create(model=uid, prompt="hello world", max_tokens=8, temperature=0)
    return done.choices[0].text


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("replica", timeout=120)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


def replica_answer(socket_path: str) -> str:
    """The same completion as ``answer``, asked of one replica on its own socket."""
    connection = UnixHTTPConnection(socket_path)
    try:
        body = json.dumps({"model": "tiny", "prompt": "hello world", "max_tokens": 8, "temperature": 0})
        connection.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200
        text: str = json.loads(response.read())["choices"][0]["text"]
        return text
    finally:
        connection.close()


def test_a_preloaded_server_forks_both_replicas_and_they_answer_like_one_model(
    make_daemon: Any, tmp_path: Path
) -> None:
    daemon = make_daemon(env={"XINFD_PRELOAD_ENGINES": "transformers"}).start()
    [server] = wait_for(lambda: fork_servers(daemon) or None, timeout=120)
    # The server holds torch and transformers without a single thread besides its own.
    assert wait_for(lambda: f"fork server {server} ready" in daemon.log(), timeout=120)
    assert len(os.listdir(f"/proc/{server}/task")) == 1
    register_tiny(daemon, tmp_path)
    daemon.xinfctl("launch", "-n", "tiny", "-e", "transformers", "-r", "2", timeout=300)
    pids = replica_pids(daemon)
    assert len(pids) == 2 and {parent(pid) for pid in pids} == {server}
    [shown] = daemon.xinfctl_json("status")["fork_servers"]
    assert shown["pid"] == server and shown["pinned"] and shown["replicas"] == 2
    assert "transformers" in shown["modules"] and shown["import_seconds"] > 0
    assert f"fork server:    pid {server}, 2 replica(s), kept" in daemon.xinfctl("status").stdout
    # Greedy answers: through the daemon, and from each replica's own socket, the same text.
    through_daemon = answer(daemon)
    sockets = [r["socket"] for m in daemon.xinfctl_json("list") for r in m["replicas"]]
    assert [replica_answer(path) for path in sockets] == [through_daemon, through_daemon] and through_daemon
    # Each child sized torch from its own budget (one thread here), not the server's.
    logs = [Path(r["log"]).read_text() for m in daemon.xinfctl_json("list") for r in m["replicas"]]
    assert all("torch threads: 1 intra-op, 1 inter-op" in log for log in logs)

    # A replica killed from outside is restarted, again from the server.
    os.kill(pids[0], signal.SIGKILL)
    def restarted_pids() -> list[int] | None:
        now = replica_pids(daemon)
        return now if len(now) == 2 and pids[0] not in now else None

    restarted = wait_for(restarted_pids, timeout=120)
    assert {parent(pid) for pid in restarted} == {server}
    assert answer(daemon)

    # The server stays for the next launch after a terminate (it was asked for at start)...
    daemon.xinfctl("terminate", "tiny")
    assert fork_servers(daemon) == [server]
    # ...and goes with the daemon, its replicas first.
    daemon.xinfctl("launch", "-n", "tiny", "-e", "transformers", timeout=300)
    last = replica_pids(daemon)
    assert daemon.stop(signal.SIGTERM) == 0
    assert not any(pid_alive(pid) for pid in [server, *last])


def test_a_fork_server_started_by_a_launch_survives_its_crash_through_supervision(
    make_daemon: Any, tmp_path: Path
) -> None:
    daemon = make_daemon(env={"XINFD_RESTART_BACKOFF": "0.1"}).start()
    assert fork_servers(daemon) == []  # none until a launch needs one
    register_tiny(daemon, tmp_path)
    daemon.xinfctl("launch", "-n", "tiny", "-e", "transformers", timeout=300)
    [server] = fork_servers(daemon)
    [pid] = replica_pids(daemon)
    assert parent(pid) == server
    first = answer(daemon)

    # The server dies: its replica dies with it (parent-death signal), is seen as killed, and comes back
    # forked from a new server.
    os.kill(server, signal.SIGKILL)
    [again] = wait_for(lambda: next(([p] for p in replica_pids(daemon) if p != pid), None), timeout=180)
    [new_server] = fork_servers(daemon)
    assert new_server != server and parent(again) == new_server
    listed = daemon.xinfctl_json("list")[0]["replicas"][0]
    assert listed["restarts"] == 1 and "killed by signal 9" in (listed["last_exit"] or "")
    assert answer(daemon) == first


def test_fork_server_off_execs_every_replica(make_daemon: Any, tmp_path: Path) -> None:
    daemon = make_daemon(env={"XINFD_FORK_SERVER": "0"}).start()
    register_tiny(daemon, tmp_path)
    daemon.xinfctl("launch", "-n", "tiny", "-e", "transformers", timeout=300)
    [pid] = replica_pids(daemon)
    assert parent(pid) == daemon.pid and fork_servers(daemon) == []
    assert answer(daemon)
