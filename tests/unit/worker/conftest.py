"""Fixtures for the worker host tests: the echo model behind ``make_worker_app``, and a test client."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from xinfd_echo.model import EchoModel, EchoOptions

from xinfd.worker.host import make_worker_app

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def build_app(model: object, **overrides: Any) -> web.Application:
    settings: dict[str, Any] = {
        "model_uid": "echo-1",
        "model_name": "echo",
        "context_length": 4096,
        "max_tokens_cap": None,
        "replica_label": "echo-1-0",
    }
    settings.update(overrides)
    return make_worker_app(model, **settings)


@pytest.fixture
def make_client(aiohttp_client: Any) -> ClientFactory:
    """``await make_client(model, context_length=8, ...)``: a test client on a fresh worker app."""

    async def factory(model: object | None = None, **overrides: Any) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = await aiohttp_client(build_app(model or EchoModel(), **overrides))
        return client

    return factory


@pytest.fixture
async def echo_client(make_client: ClientFactory) -> TestClient[Any, Any]:
    return await make_client(EchoModel(EchoOptions()))


def chat_body(text: str, **fields: Any) -> dict[str, Any]:
    return {"model": "echo-1", "messages": [{"role": "user", "content": text}], **fields}
