"""A completion without max_tokens is bounded, through a real daemon and the echo engine: by the daemon's
default_max_tokens (XINFD_DEFAULT_MAX_TOKENS), by the family's default_max_tokens when it declares one, and
always by the operator's cap (XINFERENCE_MAX_TOKENS); a default larger than the room the prompt leaves is
fitted to it, not refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.integration.test_daemon import launch_echo, post

PROMPT = " ".join(f"w{i}" for i in range(40))  # 40 echo tokens: more than every budget below


def usage(daemon: Any, model: str = "echo", **body: Any) -> tuple[int, str]:
    status, _, raw = post(
        daemon.endpoint, "/v1/chat/completions",
        {"model": model, "messages": [{"role": "user", "content": PROMPT}], **body},
    )
    assert status == 200, raw
    answer = json.loads(raw)
    return int(answer["usage"]["completion_tokens"]), str(answer["choices"][0]["finish_reason"])


def test_the_daemons_default_bounds_a_request_without_a_limit(make_daemon: Any) -> None:
    daemon = make_daemon(env={"XINFD_DEFAULT_MAX_TOKENS": "5"}).start()
    launch_echo(daemon, replicas=1)
    assert usage(daemon) == (5, "length")
    assert usage(daemon, max_tokens=7) == (7, "length")  # the client's own limit is kept
    assert usage(daemon, max_completion_tokens=9) == (9, "length")
    assert "default_max_tokens = 5" in daemon.xinfctl("config").stdout


def test_the_familys_default_wins_over_the_daemons_and_the_cap_over_both(make_daemon: Any, tmp_path: Path) -> None:
    spec = {
        "name": "echo-brief", "abilities": ["chat", "generate"], "engines": ["echo"], "context_length": 4096,
        "default_max_tokens": 3, "sampling": {"temperature": 0.2, "top_p": 0.9}, "virtualenv": {"packages": []},
    }
    (tmp_path / "echo-brief.json").write_text(json.dumps(spec))
    daemon = make_daemon(env={"XINFD_DEFAULT_MAX_TOKENS": "5"}).start()
    assert daemon.xinfctl("register", "--file", str(tmp_path / "echo-brief.json")).returncode == 0
    daemon.xinfctl("launch", "-n", "echo-brief", "--json")
    assert usage(daemon, "echo-brief") == (3, "length")
    assert usage(daemon, "echo-brief", max_tokens=6) == (6, "length")

    capped = make_daemon("capped", env={"XINFD_DEFAULT_MAX_TOKENS": "5", "XINFERENCE_MAX_TOKENS": "2"}).start()
    launch_echo(capped, replicas=1)
    assert usage(capped) == (2, "length")
    assert usage(capped, max_tokens=6) == (2, "length")


def test_a_default_larger_than_the_room_left_is_fitted_to_the_prompt(make_daemon: Any) -> None:
    daemon = make_daemon(env={"XINFD_DEFAULT_MAX_TOKENS": "1000"}).start()
    launch_echo(daemon, replicas=1)
    long_prompt = " ".join(f"w{i}" for i in range(4090))  # the echo family's context is 4096 tokens
    status, _, raw = post(daemon.endpoint, "/v1/completions", {"model": "echo", "prompt": long_prompt})
    assert status == 200, raw
    answer = json.loads(raw)
    assert answer["usage"]["completion_tokens"] == 4096 - answer["usage"]["prompt_tokens"]
    assert answer["choices"][0]["finish_reason"] == "length"
    # The client's own limit that does not fit is still refused, naming the field.
    status, _, raw = post(
        daemon.endpoint, "/v1/completions", {"model": "echo", "prompt": long_prompt, "max_tokens": 1000}
    )
    assert status == 400 and json.loads(raw)["error"]["param"] == "max_tokens"
