"""Hostile names: a uid with a trailing newline or control characters, over-long names, at every entry (CLI,
control API, registry files, restored state)."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

from tests.hostile.conftest import Daemon, wait_for

BAD = ["echo\n", "echo\r\nX-Injected: 1", "e\x1bcho", "e\x7fcho", "x" * 65, "../echo", "\u00e9c\u0430o"]


def test_the_cli_refuses_bad_uids_with_exit_2(daemon: Daemon) -> None:
    for uid in BAD:  # (a NUL cannot even be passed in argv; the control API test sends one)
        result = daemon.xinfctl("launch", "-n", "echo", "-u", uid, check=False, timeout=30)
        assert result.returncode == 2 and "invalid model uid" in result.stderr, uid
    assert daemon.xinfctl_json("list") == []


def control_post(daemon: Daemon, path: str, body: Any) -> tuple[int, Any]:
    """POST JSON on the control socket, as any client allowed on it could (not through xinfctl)."""
    return control_post_raw(daemon, path, json.dumps(body).encode())


def control_post_raw(daemon: Daemon, path: str, raw: bytes) -> tuple[int, Any]:
    """POST raw bytes as a JSON body on the control socket; the status and the first JSON line."""

    class Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(str(daemon.socket))

    conn = Conn("xinfd", timeout=30)
    try:
        conn.request("POST", path, body=raw, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read().splitlines()[0])
    finally:
        conn.close()


def test_the_control_api_refuses_bad_names_in_every_field(daemon: Daemon) -> None:
    for field, value in (("model_uid", "echo\n"), ("model_name", "echo\n"), ("model_engine", "echo\n"),
                         ("model_uid", "u" * 65), ("model_uid", "e\x00cho")):
        status, answer = control_post(daemon, "/v1/models", {"model_name": "echo", field: value})
        assert status == 400 and answer["error"]["param"] == field, (field, answer)
    status, answer = control_post(daemon, "/v1/models", {"model_name": "echo", "env": {"BAD\nNAME": "1"}})
    assert status == 400 and answer["error"]["param"] == "env"
    assert daemon.xinfctl_json("list") == []


def test_a_registry_file_with_a_bad_name_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "bad\nname", "abilities": ["chat"], "engines": ["echo"]}))
    result = daemon.xinfctl("register", "--file", str(spec), check=False)
    assert result.returncode == 2 and "invalid model name" in result.stderr


def test_a_restored_state_with_a_bad_uid_is_dropped(make_daemon: Any) -> None:
    daemon = make_daemon()
    (daemon.home / "state.json").write_text(json.dumps({"version": 1, "models": [
        {"model_name": "echo", "model_uid": "echo\n"}, {"model_name": "echo", "model_uid": "good"}]}))
    daemon.start()
    wait_for(lambda: [m["state"] for m in daemon.xinfctl_json("list")] == ["READY"], timeout=60)
    assert [m["model_uid"] for m in daemon.xinfctl_json("list")] == ["good"]
    assert "invalid model uid 'echo\\n'" in daemon.log()
    assert len(daemon.log()) < 200_000  # no log flood


def test_a_registry_file_on_disk_with_a_bad_name_is_skipped(make_daemon: Any) -> None:
    daemon = make_daemon()
    registrations = daemon.home / "models" / "registrations"
    registrations.mkdir(parents=True)
    (registrations / "evil.json").write_text(
        json.dumps({"name": "evil\nX-Injected: 1", "abilities": ["chat"], "engines": ["echo"]}))
    daemon.start()
    assert all("\n" not in f["model_name"] for f in daemon.xinfctl_json("families"))
    assert "evil.json skipped" in daemon.log() and "invalid model name" in daemon.log()
