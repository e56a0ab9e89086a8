"""Chat and text completions through the worker host, served by the echo model: plain and streamed."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any

from aiohttp.test_utils import TestClient
from xinfd_echo.model import EchoModel

from xinfd.errors import InvalidRequestError
from xinfd.types import ChatMessage, GeneratedDelta, GenerateRequest
from xinfd.worker.sse import decode_events

from .conftest import ClientFactory, chat_body

Client = TestClient[Any, Any]


async def post_json(client: Client, path: str, body: Mapping[str, Any]) -> tuple[int, Any]:
    resp = await client.post(path, json=body)
    return resp.status, await resp.json()


async def stream(client: Client, path: str, body: Mapping[str, Any]) -> list[Any]:
    resp = await client.post(path, json={**body, "stream": True})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    return decode_events(await resp.read())


def chat_text(events: list[Any]) -> str:
    return "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])


async def test_chat_echoes_last_user_message_with_usage(echo_client: Client) -> None:
    body = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "Hello there, world!"},
        ]
    }
    status, data = await post_json(echo_client, "/v1/chat/completions", body)
    assert status == 200
    assert data["object"] == "chat.completion"
    assert data["id"].startswith("chatcmpl-")
    assert data["model"] == "echo-1"
    assert isinstance(data["created"], int)
    [choice] = data["choices"]
    assert choice["index"] == 0
    assert choice["message"] == {"role": "assistant", "content": "Hello there, world!"}
    assert choice["finish_reason"] == "stop"
    assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


async def test_chat_accepts_text_parts_and_developer_role(echo_client: Client) -> None:
    body = {
        "messages": [
            {"role": "developer", "content": "rules"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "world"}],
            },
        ]
    }
    _, data = await post_json(echo_client, "/v1/chat/completions", body)
    assert data["choices"][0]["message"]["content"] == "hello\nworld"


async def test_max_tokens_cuts_with_length(echo_client: Client) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        _, data = await post_json(
            echo_client, "/v1/chat/completions", chat_body("one two three four", **{field: 2})
        )
        assert data["choices"][0]["message"]["content"] == "one two "
        assert data["choices"][0]["finish_reason"] == "length"
        assert data["usage"]["completion_tokens"] == 2


async def test_stop_strings_truncate_even_across_tokens(echo_client: Client) -> None:
    _, data = await post_json(
        echo_client, "/v1/chat/completions", chat_body("one two three four", stop="three")
    )
    assert data["choices"][0]["message"]["content"] == "one two "
    assert data["choices"][0]["finish_reason"] == "stop"
    events = await stream(
        echo_client, "/v1/chat/completions", chat_body("one two three four", stop=["x", "o th"])
    )
    assert chat_text(events) == "one tw"
    assert all(
        "o th" not in (e["choices"][0]["delta"].get("content") or "") for e in events[:-1] if e["choices"]
    )


async def test_operator_cap_clamps_instead_of_refusing(make_client: ClientFactory) -> None:
    client = await make_client(max_tokens_cap=2)
    for extra in ({}, {"max_tokens": 100}):
        _, data = await post_json(client, "/v1/chat/completions", chat_body("a b c d", **extra))
        assert data["choices"][0]["message"]["content"] == "a b "
        assert data["choices"][0]["finish_reason"] == "length"


async def test_default_budget_is_the_room_left_in_the_context(make_client: ClientFactory) -> None:
    client = await make_client(context_length=6)
    _, data = await post_json(client, "/v1/completions", {"prompt": "a b c d e"})  # 5 tokens: room for 1
    assert data["choices"][0]["text"] == "a "
    assert data["choices"][0]["finish_reason"] == "length"
    _, data = await post_json(client, "/v1/completions", {"prompt": "a b c"})  # room for 3: the echo fits
    assert data["choices"][0]["text"] == "a b c"
    assert data["choices"][0]["finish_reason"] == "stop"


async def test_chat_stream_shape(echo_client: Client) -> None:
    events = await stream(echo_client, "/v1/chat/completions", chat_body("Hello there, world!"))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]] == ["Hello ", "there, ", "world!"]
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert all("usage" not in c for c in chunks)
    assert chat_text(events) == "Hello there, world!"


async def test_chat_stream_with_usage(echo_client: Client) -> None:
    body = chat_body("a b c", stream_options={"include_usage": True}, max_tokens=2)
    events = await stream(echo_client, "/v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert all(c["usage"] is None for c in events[:-2])
    assert events[-3]["choices"][0]["finish_reason"] == "length"


async def test_text_completion_plain_and_streamed(echo_client: Client) -> None:
    for prompt in ("say it  twice", ["say it  twice"]):
        status, data = await post_json(echo_client, "/v1/completions", {"prompt": prompt, "seed": 7})
        assert status == 200
        assert data["object"] == "text_completion"
        assert data["id"].startswith("cmpl-")
        assert data["choices"][0]["text"] == "say it  twice"
        assert data["choices"][0]["finish_reason"] == "stop"
        assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    events = await stream(
        echo_client, "/v1/completions", {"prompt": "say it  twice", "stream_options": {"include_usage": True}}
    )
    assert events[-1] == "[DONE]"
    assert {e["object"] for e in events[:-1]} == {"text_completion"}
    assert "".join(e["choices"][0]["text"] for e in events[:-2]) == "say it  twice"
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert events[-2]["usage"]["completion_tokens"] == 3


async def test_empty_generation_still_streams_a_well_formed_answer(echo_client: Client) -> None:
    body = {"messages": [{"role": "system", "content": "no user turn"}]}
    events = await stream(echo_client, "/v1/chat/completions", body)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1] == "[DONE]"


async def test_request_id_and_replica_headers(echo_client: Client) -> None:
    resp = await echo_client.post("/v1/chat/completions", json=chat_body("hi"))
    generated = resp.headers["X-Xinfd-Request-Id"]
    assert len(generated) == 32
    assert (await resp.json())["id"] == f"chatcmpl-{generated}"
    assert resp.headers["X-Xinfd-Replica"] == "echo-1-0"
    resp = await echo_client.post(
        "/v1/chat/completions", json=chat_body("hi", stream=True), headers={"X-Xinfd-Request-Id": "daemon-42"}
    )
    assert resp.headers["X-Xinfd-Request-Id"] == "daemon-42"
    assert resp.headers["X-Xinfd-Replica"] == "echo-1-0"
    resp = await echo_client.get("/health", headers={"X-Xinfd-Request-Id": "bad id/with spaces"})
    assert resp.headers["X-Xinfd-Request-Id"] != "bad id/with spaces"
    resp = await echo_client.get("/nope")
    assert resp.headers["X-Xinfd-Replica"] == "echo-1-0"


class FailingModel(EchoModel):
    """Fails after ``good`` deltas, to exercise error reporting before and after the stream started."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good = good

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GeneratedDelta, None]:
        for index in range(self.good):
            yield GeneratedDelta(text=f"t{index} ")
        raise RuntimeError("engine exploded")


async def test_failure_before_first_token_is_a_500(make_client: ClientFactory) -> None:
    client = await make_client(FailingModel(good=0))
    for stream_flag in (False, True):
        resp = await client.post("/v1/chat/completions", json=chat_body("x", stream=stream_flag))
        assert resp.status == 500
        error = (await resp.json())["error"]
        assert error["type"] == "server_error"
        assert "exploded" not in error["message"]  # engine internals stay in the replica's log


async def test_failure_mid_stream_sends_an_error_frame_without_done(make_client: ClientFactory) -> None:
    client = await make_client(FailingModel(good=2))
    resp = await client.post("/v1/completions", json={"prompt": "x", "stream": True})
    assert resp.status == 200
    events = decode_events(await resp.read())
    assert [e["choices"][0]["text"] for e in events[:2]] == ["t0 ", "t1 "]
    assert events[-1]["error"]["type"] == "server_error"
    assert "[DONE]" not in events


class StrictTemplate(EchoModel):
    def render_chat(self, messages: list[ChatMessage], options: Mapping[str, Any]) -> str:
        if options.get("enable_thinking") is not True:
            raise InvalidRequestError("this template needs enable_thinking", param="chat_template_kwargs")
        return "thinking " + super().render_chat(messages, options)


async def test_template_options_reach_render_chat_and_engine_errors_keep_their_status(
    make_client: ClientFactory,
) -> None:
    client = await make_client(StrictTemplate())
    status, data = await post_json(client, "/v1/chat/completions", chat_body("hi"))
    assert (status, data["error"]["param"]) == (400, "chat_template_kwargs")
    body = chat_body("hi", chat_template_kwargs={"enable_thinking": True})
    status, data = await post_json(client, "/v1/chat/completions", body)
    assert data["choices"][0]["message"]["content"] == "thinking hi"


class CountingModel(EchoModel):
    """Reports its own token counts: three tokens whose text would re-encode to eight words."""

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GeneratedDelta, None]:
        yield GeneratedDelta(text="a b c ", tokens=1)
        yield GeneratedDelta(text="d e f ", tokens=2)
        yield GeneratedDelta(text="g h", finish_reason="length", tokens=3)


async def test_usage_counts_the_tokens_the_engine_generated(make_client: ClientFactory) -> None:
    """Regression: completion_tokens re-tokenized the answer, which for byte-level or random text is not the
    number of tokens generated (the batching benchmark reported 2x the real rate)."""
    client = await make_client(CountingModel())
    body = await (await client.post("/v1/completions", json={"prompt": "x"})).json()
    assert body["choices"][0]["text"] == "a b c d e f g h" and body["usage"]["completion_tokens"] == 3
    resp = await client.post("/v1/chat/completions", json=chat_body(
        "x", stream=True, stream_options={"include_usage": True}))
    usage = [e["usage"] for e in decode_events(await resp.read()) if isinstance(e, dict) and e.get("usage")]
    assert usage[-1]["completion_tokens"] == 3
    # An engine that reports nothing is counted by re-tokenizing (the echo model: one token per word).
    plain = await make_client()
    body = await (await plain.post("/v1/completions", json={"prompt": "one two three", "max_tokens": 3})).json()
    assert body["usage"]["completion_tokens"] == 3
