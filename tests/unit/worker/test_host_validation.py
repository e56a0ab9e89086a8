"""Every request the worker refuses: status 400 (or 404/405) with OpenAI's error envelope naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from xinfd.worker import host

from .conftest import ClientFactory, chat_body

Client = TestClient[Any, Any]
USER = [{"role": "user", "content": "hi"}]


async def assert_refused(resp: Any, param: str | None, status: int = 400) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    error: dict[str, Any] = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["message"]
    return error


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2]", "not an array"),
        (b'"hi"', "a string"),
    ],
)
async def test_body_must_be_a_json_object(echo_client: Client, raw: bytes, fragment: str) -> None:
    resp = await echo_client.post(
        "/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"}
    )
    error = await assert_refused(resp, None)
    assert fragment in error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_request"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_completion_tokens": 0, "max_tokens": 5}, "max_completion_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.01}, "temperature"),
        ({"temperature": "warm"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 2}, "n"),
        ({"n": "1"}, "n"),
        ({"stop": 5}, "stop"),
        ({"stop": ["ok", 3]}, "stop"),
        ({"seed": 1.5}, "seed"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": []}, "stream_options"),
        ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({"chat_template_kwargs": "x"}, "chat_template_kwargs"),
    ],
)
async def test_invalid_sampling_fields(echo_client: Client, fields: dict[str, Any], param: str) -> None:
    resp = await echo_client.post("/v1/chat/completions", json={"messages": USER, **fields})
    await assert_refused(resp, param)


async def test_non_finite_temperature(echo_client: Client) -> None:
    # Python's json accepts NaN, so a client can send it; it must not reach an engine.
    raw = b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    resp = await echo_client.post("/v1/chat/completions", data=raw)
    await assert_refused(resp, "temperature")


async def test_boundary_values_are_accepted(echo_client: Client) -> None:
    for fields in (
        {"temperature": 0},
        {"temperature": 2},
        {"top_p": 1},
        {"n": 1},
        {"stop": None, "seed": None},
    ):
        resp = await echo_client.post("/v1/chat/completions", json={"messages": USER, **fields})
        assert resp.status == 200, fields


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (None, "messages"),
        ("hello", "messages"),
        ([], "messages"),
        (["hello"], "messages[0]"),
        ([{"role": "robot", "content": "hi"}], "messages[0].role"),
        ([{"content": "hi"}], "messages[0].role"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": 5}], "messages[1].content"),
        ([{"role": "user", "content": None}], "messages[0].content"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "messages[0].content",
        ),
        ([{"role": "user", "content": [{"type": "text", "text": 3}]}], "messages[0].content"),
    ],
)
async def test_invalid_messages(echo_client: Client, messages: Any, param: str) -> None:
    body = {} if messages is None else {"messages": messages}
    await assert_refused(await echo_client.post("/v1/chat/completions", json=body), param)


@pytest.mark.parametrize(
    ("prompt", "param"),
    [(None, "prompt"), (["a", "b"], "prompt"), ([], "prompt"), ([1, 2], "prompt"), (7, "prompt")],
)
async def test_invalid_prompts(echo_client: Client, prompt: Any, param: str) -> None:
    body = {} if prompt is None else {"prompt": prompt}
    await assert_refused(await echo_client.post("/v1/completions", json=body), param)


async def test_prompt_longer_than_context(make_client: ClientFactory) -> None:
    client = await make_client(context_length=8)
    resp = await client.post("/v1/chat/completions", json=chat_body("w " * 10))
    error = await assert_refused(resp, "messages")
    assert "10" in error["message"] and "8" in error["message"]
    resp = await client.post("/v1/completions", json={"prompt": "w " * 8})  # exactly full: no room left
    await assert_refused(resp, "prompt")


async def test_a_smaller_engine_context_window_is_the_limit(make_client: ClientFactory) -> None:
    """llama.cpp loaded with n_ctx below the family's context length: prompts are checked against n_ctx."""
    from xinfd_echo.model import EchoModel, EchoOptions

    model = EchoModel(EchoOptions())
    model.context_window = 8
    client = await make_client(model, context_length=4096)
    error = await assert_refused(await client.post("/v1/completions", json={"prompt": "w " * 10}), "prompt")
    assert "10" in error["message"] and "8" in error["message"]
    ok = await client.post("/v1/completions", json={"prompt": "w w", "max_tokens": 6})
    assert ok.status == 200
    model.context_window = 100_000  # larger than the family's: ignored
    client = await make_client(model, context_length=8)
    await assert_refused(await client.post("/v1/completions", json={"prompt": "w " * 10}), "prompt")


def test_context_window_is_a_declared_attribute() -> None:
    """A model object without ``context_window`` does not implement the protocol; a bad value is refused."""
    from xinfd_echo.model import EchoModel

    from xinfd.worker.host import make_worker_app

    class Undeclared:
        def count_tokens(self, text: str) -> int:
            return 1

        async def embed(self, texts: list[str]) -> list[list[float]]:
            return [[0.0] for _ in texts]

    kw: dict[str, Any] = {"model_uid": "m", "model_name": "m", "context_length": 8, "max_tokens_cap": None,
                          "replica_label": "m-r0"}
    with pytest.raises(TypeError, match="implements none of TextModel, EmbeddingModel, RerankModel and ImageModel"):
        make_worker_app(Undeclared(), **kw)
    for bad in (0, "8", True):
        model = EchoModel()
        model.context_window = bad  # type: ignore[assignment]
        with pytest.raises(TypeError, match="context_window must be a positive int or None"):
            make_worker_app(model, **kw)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"enable_thinking": "false"}, "chat_template_kwargs.enable_thinking"),
        ({"enable_thinking": 0}, "chat_template_kwargs.enable_thinking"),
        ({"enable_thinking": None}, "chat_template_kwargs.enable_thinking"),
        ({"messages": []}, "chat_template_kwargs.messages"),
        ({"add_generation_prompt": False}, "chat_template_kwargs.add_generation_prompt"),
        ({"bos_token": "<s>", "tools": []}, "chat_template_kwargs.bos_token"),
        ([], "chat_template_kwargs"),
    ],
)
async def test_chat_template_kwargs_are_checked_before_the_template(
    echo_client: Client, kwargs: object, param: str
) -> None:
    resp = await echo_client.post("/v1/chat/completions", json=chat_body("hi", chat_template_kwargs=kwargs))
    error = await assert_refused(resp, param)
    if param.endswith("enable_thinking"):
        assert "must be a boolean" in error["message"]


async def test_boolean_enable_thinking_and_own_keys_reach_the_template(echo_client: Client) -> None:
    body = chat_body("hi", chat_template_kwargs={"enable_thinking": False, "custom_flag": "x"})
    assert (await echo_client.post("/v1/chat/completions", json=body)).status == 200


async def test_completion_budget_beyond_context(make_client: ClientFactory) -> None:
    client = await make_client(context_length=8)
    resp = await client.post("/v1/chat/completions", json=chat_body("a b c", max_completion_tokens=6))
    error = await assert_refused(resp, "max_completion_tokens")
    assert "3 in the prompt, 6 for the completion" in error["message"]


async def test_embeddings_on_a_text_model_is_404(echo_client: Client) -> None:
    resp = await echo_client.post("/v1/embeddings", json={"input": "hi"})
    error = await assert_refused(resp, None, status=404)
    assert error["code"] == "unsupported_endpoint"
    assert "echo-1" in error["message"]


async def test_unknown_route_and_wrong_method_use_the_envelope(echo_client: Client) -> None:
    error = await assert_refused(await echo_client.get("/v1/nothing"), None, status=404)
    assert error["code"] == "not_found"
    resp = await echo_client.get("/v1/chat/completions")
    error = await assert_refused(resp, None, status=405)
    assert resp.headers["Allow"] == "POST"


async def test_huge_body_is_refused_with_413(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(host, "MAX_BODY_BYTES", 1024)
    client = await make_client()
    resp = await client.post("/v1/completions", json={"prompt": "x" * 2048})
    await assert_refused(resp, None, status=413)
