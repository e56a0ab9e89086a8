"""Optional OpenAI fields through a real daemon on echo, with the openai SDK: logprobs answered in OpenAI's
shape (echo's are made up, deterministic), fields the engine does not honour refused by the daemon before any
replica sees them (no ``X-Xinfd-Replica`` header), naming the field and the engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.integration.conftest import Daemon
from tests.integration.test_daemon import launch_echo, post

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_logprobs_and_refusals(daemon: Daemon) -> None:
    launch_echo(daemon, replicas=1)
    api = openai.OpenAI(base_url=daemon.endpoint + "/v1", api_key="none", max_retries=0)
    reply = api.chat.completions.create(model="echo", messages=[{"role": "user", "content": "one two"}],
                                        logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and [c.token for c in content] == ["one ", "two"]
    assert [t.token for t in content[0].top_logprobs] == ["one ", "<alt1>"]
    stream = api.chat.completions.create(model="echo", messages=[{"role": "user", "content": "a b c"}],
                                         logprobs=True, stream=True)
    streamed = [c.choices[0].logprobs.content[0].token for c in stream  # type: ignore[index,union-attr]
                if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content]
    assert streamed == ["a ", "b ", "c"]
    text = api.completions.create(model="echo", prompt="x y", logprobs=1)
    assert text.choices[0].logprobs is not None and text.choices[0].logprobs.tokens == ["x ", "y"]

    for path, body, param in (
        ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
        ("/v1/chat/completions", {"n": 2}, "n"),
        ("/v1/completions", {"best_of": 2}, "best_of"),
    ):
        payload = ({"messages": [{"role": "user", "content": "x"}]} if "chat" in path else {"prompt": "x"})
        status, headers, raw = post(daemon.endpoint, path, {"model": "echo", **payload, **body})
        error: dict[str, Any] = json.loads(raw)["error"]
        assert (status, error["param"]) == (400, param), raw
        assert "engine 'echo'" in error["message"]
        assert "X-Xinfd-Replica" not in headers  # refused by the daemon, not forwarded
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        api.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}], tool_choice="required")


@pytest.mark.slow
def test_transformers_logprobs_through_the_daemon(daemon: Daemon, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from tests.integration.test_engines import register_tiny

    register_tiny(daemon, tmp_path, "tiny-lp", think=False)
    daemon.xinfctl("launch", "-n", "tiny-lp", "-e", "transformers", timeout=300)
    api = openai.OpenAI(base_url=daemon.endpoint + "/v1", api_key="none", max_retries=0, timeout=120)
    reply = api.chat.completions.create(model="tiny-lp", messages=[{"role": "user", "content": "hello"}],
                                        max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and reply.usage is not None and len(content) == reply.usage.completion_tokens
    assert all(c.logprob <= 0 and len(c.top_logprobs) == 2 for c in content)
    with pytest.raises(openai.BadRequestError, match="engine 'transformers'"):
        api.chat.completions.create(model="tiny-lp", messages=[{"role": "user", "content": "x"}],
                                    response_format={"type": "json_object"})
