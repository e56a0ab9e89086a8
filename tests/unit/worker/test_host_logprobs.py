"""Log probabilities through the worker host (echo's made-up, deterministic ones) and the refusal of optional
fields an engine does not honour."""

from __future__ import annotations

from typing import Any

import pytest
from xinfd_echo.model import EchoModel

from xinfd.worker.sse import decode_events

from .conftest import ClientFactory, chat_body
from .test_host_validation import assert_refused

LOGPROBS = frozenset({"logprobs"})


async def test_chat_logprobs_in_openai_shape(make_client: ClientFactory) -> None:
    client = await make_client(EchoModel(), engine="echo", request_features=LOGPROBS)
    resp = await client.post("/v1/chat/completions", json=chat_body("one two", logprobs=True, top_logprobs=2))
    assert resp.status == 200, await resp.text()
    choice = (await resp.json())["choices"][0]
    assert choice["message"]["content"] == "one two"
    content = choice["logprobs"]["content"]
    assert [c["token"] for c in content] == ["one ", "two"]
    assert content[0] == {
        "token": "one ", "logprob": -0.04, "bytes": list(b"one "),
        "top_logprobs": [{"token": "one ", "logprob": -0.04, "bytes": list(b"one ")},
                         {"token": "<alt1>", "logprob": -1.04, "bytes": list(b"<alt1>")}],
    }


async def test_chat_without_logprobs_has_none(make_client: ClientFactory) -> None:
    client = await make_client(EchoModel(), engine="echo", request_features=LOGPROBS)
    resp = await client.post("/v1/chat/completions", json=chat_body("one two", logprobs=False))
    assert (await resp.json())["choices"][0]["logprobs"] is None


async def test_completion_logprobs_and_stream(make_client: ClientFactory) -> None:
    client = await make_client(EchoModel(), engine="echo", request_features=LOGPROBS)
    whole = await (await client.post("/v1/completions", json={"prompt": "ab cd ef", "logprobs": 1})).json()
    assert whole["choices"][0]["logprobs"] == {
        "tokens": ["ab ", "cd ", "ef"], "token_logprobs": [-0.03, -0.03, -0.02],
        "top_logprobs": [{"ab ": -0.03}, {"cd ": -0.03}, {"ef": -0.02}], "text_offset": [0, 3, 6],
    }
    resp = await client.post("/v1/completions", json={"prompt": "ab cd ef", "logprobs": 0, "stream": True})
    chunks = [e for e in decode_events(await resp.read()) if e != "[DONE]"]
    streamed = [c["choices"][0]["logprobs"] for c in chunks if c["choices"][0]["logprobs"]]
    assert [lp["tokens"] for lp in streamed] == [["ab "], ["cd "], ["ef"]]
    assert [lp["text_offset"] for lp in streamed] == [[0], [3], [6]]  # counted from the completion's start
    assert all(lp["top_logprobs"] == [{}] for lp in streamed)


async def test_chat_stream_carries_logprobs_per_chunk(make_client: ClientFactory) -> None:
    client = await make_client(EchoModel(), engine="echo", request_features=LOGPROBS)
    resp = await client.post("/v1/chat/completions", json=chat_body("x y", logprobs=True, stream=True))
    chunks = [e for e in decode_events(await resp.read()) if e != "[DONE]"]
    tokens = [c["choices"][0]["logprobs"]["content"][0]["token"] for c in chunks if c["choices"][0]["logprobs"]]
    assert tokens == ["x ", "y"]


async def test_stop_string_cuts_the_last_token(make_client: ClientFactory) -> None:
    client = await make_client(EchoModel(), engine="echo", request_features=LOGPROBS)
    answer = await (await client.post("/v1/completions", json={"prompt": "abcXYZ def", "logprobs": 0,
                                                               "stop": ["XYZ"]})).json()
    assert answer["choices"][0]["text"] == "abc"
    assert answer["choices"][0]["logprobs"]["tokens"] == ["abc"]


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        ("/v1/chat/completions", {"logprobs": True}, "logprobs"),
        ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ("/v1/chat/completions", {"tool_choice": "auto"}, "tool_choice"),
        ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
        ("/v1/chat/completions", {"logit_bias": {"1": 5}}, "logit_bias"),
        ("/v1/chat/completions", {"presence_penalty": 0.5}, "presence_penalty"),
        ("/v1/chat/completions", {"n": 3}, "n"),
        ("/v1/completions", {"best_of": 2}, "best_of"),
        ("/v1/completions", {"echo": True}, "echo"),
        ("/v1/completions", {"suffix": "end"}, "suffix"),
        ("/v1/completions", {"logprobs": 2}, "logprobs"),
    ],
)
async def test_unsupported_fields_are_refused_naming_engine(
    make_client: ClientFactory, path: str, fields: dict[str, Any], param: str
) -> None:
    client = await make_client(EchoModel(), engine="plain")
    payload = chat_body("hi", **fields) if "chat" in path else {"prompt": "hi", **fields}
    error = await assert_refused(await client.post(path, json=payload), param)
    assert "'plain'" in error["message"]


async def test_off_values_use_nothing(make_client: ClientFactory) -> None:
    client = await make_client(EchoModel(), engine="plain")
    off = {"logprobs": False, "tools": [], "tool_choice": "none", "response_format": {"type": "text"}, "n": 1,
           "logit_bias": {}, "presence_penalty": 0, "frequency_penalty": 0.0, "user": "u1"}
    resp = await client.post("/v1/chat/completions", json=chat_body("hi", **off))
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        ("/v1/chat/completions", {"logprobs": 1}, "logprobs"),
        ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("/v1/completions", {"logprobs": True}, "logprobs"),
        ("/v1/completions", {"logprobs": 1, "top_logprobs": 1}, "top_logprobs"),
    ],
)
async def test_malformed_logprobs(make_client: ClientFactory, path: str, fields: dict[str, Any], param: str) -> None:
    client = await make_client(EchoModel(), engine="echo", request_features=LOGPROBS)
    payload = chat_body("hi", **fields) if "chat" in path else {"prompt": "hi", **fields}
    await assert_refused(await client.post(path, json=payload), param)
