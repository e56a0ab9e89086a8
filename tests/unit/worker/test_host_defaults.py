"""The worker host's side of a request's defaults: the family's completion budget for a request without a limit,
a limit the daemon filled in (``X-Xinfd-Default-Max-Tokens``) fitted to the prompt instead of refused, and the
loaded model's own sampling defaults (``sampling_defaults``, the weights' generation_config) for the fields the
request leaves unset."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from xinfd_echo.model import EchoModel

from xinfd.sampling_defaults import DEFAULTED_LIMIT_HEADER
from xinfd.types import GeneratedDelta, GenerateRequest

from .conftest import ClientFactory, chat_body


class RecordingModel(EchoModel):
    """The echo model that keeps the requests it got and declares its own sampling defaults."""

    def __init__(self, sampling_defaults: dict[str, Any]) -> None:
        super().__init__()
        self.sampling_defaults = sampling_defaults
        self.requests: list[GenerateRequest] = []

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GeneratedDelta, None]:
        self.requests.append(request)
        async for delta in super().generate(request):
            yield delta


async def test_a_request_without_a_limit_gets_the_familys_budget(make_client: ClientFactory) -> None:
    client = await make_client(default_max_tokens=2)
    resp = await client.post("/v1/completions", json={"prompt": "a b c d"})
    data = await resp.json()
    assert (data["choices"][0]["text"], data["choices"][0]["finish_reason"]) == ("a b ", "length")
    assert data["usage"]["completion_tokens"] == 2
    resp = await client.post("/v1/completions", json={"prompt": "a b c d", "max_tokens": 3})  # the client's wins
    assert (await resp.json())["usage"]["completion_tokens"] == 3


async def test_a_budget_larger_than_the_room_left_is_lowered_to_it(make_client: ClientFactory) -> None:
    client = await make_client(context_length=6, default_max_tokens=100)
    resp = await client.post("/v1/completions", json={"prompt": "a b c d e"})  # room for 1
    assert (await resp.json())["usage"]["completion_tokens"] == 1


async def test_a_limit_the_daemon_filled_in_is_fitted_to_the_prompt(make_client: ClientFactory) -> None:
    client = await make_client(context_length=6)
    body = {"prompt": "a b c d e", "max_tokens": 4}  # 5 prompt tokens + 4 do not fit in 6
    refused = await client.post("/v1/completions", json=body)
    assert refused.status == 400 and (await refused.json())["error"]["param"] == "max_tokens"
    fitted = await client.post("/v1/completions", json=body, headers={DEFAULTED_LIMIT_HEADER: "1"})
    data = await fitted.json()
    assert fitted.status == 200 and data["usage"]["completion_tokens"] == 1
    assert data["choices"][0]["finish_reason"] == "length"


async def test_the_models_sampling_defaults_fill_only_unset_fields(make_client: ClientFactory) -> None:
    model = RecordingModel({"temperature": 0.3, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.1})
    client = await make_client(model)
    assert (await client.post("/v1/chat/completions", json=chat_body("hi"))).status == 200
    got = model.requests[-1]
    assert (got.temperature, got.top_p, got.top_k, got.repetition_penalty) == (0.3, 0.8, 20, 1.1)
    own = chat_body("hi", temperature=0, top_p=1, top_k=5, repetition_penalty=1.0)
    assert (await client.post("/v1/chat/completions", json=own)).status == 200
    got = model.requests[-1]
    assert (got.temperature, got.top_p, got.top_k, got.repetition_penalty) == (0.0, 1.0, 5, 1.0)


async def test_without_model_defaults_the_engines_own_apply(make_client: ClientFactory) -> None:
    model = RecordingModel({})
    client = await make_client(model)
    assert (await client.post("/v1/completions", json={"prompt": "x", "top_k": -1})).status == 200
    got = model.requests[-1]
    assert (got.temperature, got.top_p, got.top_k, got.repetition_penalty) == (1.0, 1.0, None, None)


async def test_bad_extra_sampling_fields_are_refused_by_name(make_client: ClientFactory) -> None:
    client = await make_client()
    for field, value in (("top_k", 1.5), ("top_k", -2), ("top_k", True), ("repetition_penalty", 0),
                         ("repetition_penalty", 3), ("repetition_penalty", "1")):
        resp = await client.post("/v1/completions", json={"prompt": "x", field: value})
        assert resp.status == 400 and (await resp.json())["error"]["param"] == field, (field, value)
