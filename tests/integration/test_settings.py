"""Settings reach every process the way they are declared, through a real daemon: the TOML file's
max_tokens caps requests, SIGHUP changes it for running replicas, values needing a restart are shown as
pending, and names that are not settings are reported instead of ignored."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

from tests.integration.conftest import daemon_env, wait_for
from tests.integration.test_daemon import launch_echo, post

PROMPT = "one two three four five six seven eight"


def completion_tokens(daemon: Any, **body: Any) -> int:
    status, _, raw = post(daemon.endpoint, "/v1/completions", {"model": "echo", "prompt": PROMPT, **body})
    assert status == 200, raw
    return int(json.loads(raw)["usage"]["completion_tokens"])


def streamed_tokens(daemon: Any, **body: Any) -> int:
    status, _, raw = post(
        daemon.endpoint, "/v1/chat/completions",
        {"model": "echo", "messages": [{"role": "user", "content": PROMPT}], "stream": True, **body},
    )
    assert status == 200, raw
    frames = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: {")]
    return sum(1 for f in frames if json.loads(f)["choices"] and json.loads(f)["choices"][0]["delta"].get("content"))


def test_toml_max_tokens_caps_requests_and_sighup_changes_it_live(make_daemon: Any, tmp_path: Path) -> None:
    config = tmp_path / "xinfd.toml"
    config.write_text("max_tokens = 2\n")
    daemon = make_daemon().start("--config", str(config))
    launch_echo(daemon, replicas=1)
    assert completion_tokens(daemon, max_tokens=6) == 2  # a larger request is lowered to the cap
    assert completion_tokens(daemon) == 2  # a request with no limit gets the cap
    assert completion_tokens(daemon, max_tokens=1) == 1  # a smaller one is kept
    assert streamed_tokens(daemon, max_completion_tokens=6) == 2
    shown = daemon.xinfctl("config").stdout
    assert f"max_tokens = 2  # from: file {config}" in shown

    config.write_text("max_tokens = 5\nlaunch_timeout = 120\n")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in daemon.log(), timeout=10)
    # The same replica (no restart) now serves up to 5 tokens.
    assert completion_tokens(daemon, max_tokens=6) == 5
    shown = daemon.xinfctl("config").stdout
    assert f"max_tokens = 5  # from: file {config}" in shown
    assert f"#   pending restart: launch_timeout = 120.0  (from: file {config})" in shown

    config.write_text("")  # unset: no cap at all
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: daemon.log().count("configuration reloaded") == 2, timeout=10)
    assert completion_tokens(daemon, max_tokens=6) == 6
    assert "pending restart" not in daemon.xinfctl("config").stdout


def _statuses_while_a_slow_request_runs(daemon: Any) -> list[int]:
    """Stream an 8-token completion at 0.2 s a token; once its first token arrived (it holds a slot), send short
    requests until it ends. Returns their statuses."""
    started, finished = threading.Event(), threading.Event()
    slow_status: list[int] = []

    def slow() -> None:
        body = {"model": "echo", "prompt": PROMPT, "max_tokens": 8, "stream": True}
        request = urllib.request.Request(
            f"{daemon.endpoint}/v1/completions", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            slow_status.append(response.status)
            response.readline()
            started.set()
            response.read()
        finished.set()

    thread = threading.Thread(target=slow)
    thread.start()
    assert started.wait(timeout=30)
    seen = []
    while not finished.is_set():
        seen.append(post(daemon.endpoint, "/v1/completions", {"model": "echo", "prompt": "x", "max_tokens": 1})[0])
    thread.join()
    assert slow_status == [200]
    return seen[:-1]  # the last one may have been sent after the slow request ended


def test_sighup_applies_admission_limits_to_running_models(make_daemon: Any, tmp_path: Path) -> None:
    config = tmp_path / "xinfd.toml"
    config.write_text("replica_max_concurrency = 1\nmodel_queue_size = 0\n")
    daemon = make_daemon().start("--config", str(config))
    launch_echo(daemon, "--delay", "0.2", replicas=1)
    assert 429 in _statuses_while_a_slow_request_runs(daemon)  # one at a time, no queue
    config.write_text("replica_max_concurrency = 4\nmodel_queue_size = 0\n")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: replica_max_concurrency = 4" in daemon.log(), timeout=10)
    statuses = _statuses_while_a_slow_request_runs(daemon)
    assert statuses and set(statuses) == {200}  # the running model admits beside the slow request now


def test_a_misspelled_variable_is_reported_at_start(make_daemon: Any) -> None:
    daemon = make_daemon(env={"XINFERENCE_ALLOWED_IP": "10.0.0.0/8"}).start()
    log = daemon.log()
    assert "environment variable XINFERENCE_ALLOWED_IP is not an xinfd setting, ignored" in log
    assert "did you mean XINFERENCE_ALLOWED_IPS?" in log


def test_print_config_strict_refuses_unknown_names(tmp_path: Path) -> None:
    env = daemon_env(tmp_path, {"XINFERENCE_ALLOWED_IP": "10.0.0.0/8"})
    run = [sys.executable, "-m", "xinfd.daemon", "--print-config"]
    loose = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert loose.returncode == 0 and "XINFERENCE_ALLOWED_IP is not an xinfd setting" in loose.stderr
    strict = subprocess.run([*run, "--strict"], env=env, capture_output=True, text=True, timeout=60)
    assert strict.returncode == 2
    assert strict.stderr.strip().splitlines() == [
        "xinfd: environment variable XINFERENCE_ALLOWED_IP is not an xinfd setting; did you mean "
        "XINFERENCE_ALLOWED_IPS? (allowed_ips is NOT set by it: access is not restricted the way this name "
        "suggests) (--strict)"
    ]
