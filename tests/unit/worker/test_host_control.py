"""Health, model listing, embeddings, aborts, cancellation and serving on a real Unix socket."""

from __future__ import annotations

import asyncio
import base64
import struct
import tempfile
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from xinfd_echo.model import EchoModel, EchoOptions

from xinfd.types import GeneratedDelta, GenerateRequest
from xinfd.worker.host import INFLIGHT_KEY, make_worker_app, serve
from xinfd.worker.libraries import imported_libraries
from xinfd.worker.sse import decode_events

from .conftest import ClientFactory, build_app, chat_body

Client = TestClient[Any, Any]
LONG = " ".join(f"w{i}" for i in range(200))  # 200 tokens: seconds of work at the delays used below


class RecordingEcho(EchoModel):
    """An echo model that records when a generation starts and when its iterator is closed."""

    def __init__(self, delay: float = 0.02) -> None:
        super().__init__(EchoOptions(delay=delay))
        self.started = asyncio.Event()
        self.closed = asyncio.Event()
        self.deltas = 0

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GeneratedDelta, None]:
        inner = super().generate(request)
        self.started.set()
        try:
            async for delta in inner:
                self.deltas += 1
                yield delta
        finally:
            await inner.aclose()
            self.closed.set()


class FakeEmbedder:
    """A minimal EmbeddingModel: a 3-dimensional vector derived from each text."""

    context_window: int | None = None

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return [[float(len(text)), 0.5, -1.0] for text in texts]


async def test_health_and_models(echo_client: Client) -> None:
    resp = await echo_client.get("/health")
    # The libraries this process imported, as the daemon stores them on the replica at readiness.
    assert (resp.status, await resp.json()) == (200, {"status": "ok", "libraries": imported_libraries()})
    data = await (await echo_client.get("/v1/models")).json()
    assert data["object"] == "list"
    [card] = data["data"]
    assert card["id"] == "echo-1"
    assert card["object"] == "model"
    assert card["owned_by"] == "xinfd"
    assert card["max_model_len"] == 4096


async def test_embeddings_float_and_base64(make_client: ClientFactory) -> None:
    client = await make_client(FakeEmbedder(), model_uid="emb-1")
    resp = await client.post("/v1/embeddings", json={"input": ["hello world", "x"], "model": "emb-1"})
    assert resp.status == 200
    data = await resp.json()
    assert data["object"] == "list"
    assert data["model"] == "emb-1"
    assert data["data"] == [
        {"object": "embedding", "index": 0, "embedding": [11.0, 0.5, -1.0]},
        {"object": "embedding", "index": 1, "embedding": [1.0, 0.5, -1.0]},
    ]
    assert data["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    # The openai SDK asks for base64 by default and decodes little-endian float32.
    data = await (
        await client.post("/v1/embeddings", json={"input": "abc", "encoding_format": "base64"})
    ).json()
    raw = base64.b64decode(data["data"][0]["embedding"])
    assert struct.unpack("<3f", raw) == (3.0, 0.5, -1.0)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": []}, "input"),
        ({"input": [1, 2]}, "input"),
        ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "x", "dimensions": 2}, "dimensions"),
        ({"input": ["ok", "a b c d e f g h i"]}, "input"),
    ],
)
async def test_embeddings_validation(make_client: ClientFactory, body: dict[str, Any], param: str) -> None:
    client = await make_client(FakeEmbedder(), context_length=8)
    resp = await client.post("/v1/embeddings", json=body)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == param


async def test_text_routes_on_an_embedding_model_are_404(make_client: ClientFactory) -> None:
    client = await make_client(FakeEmbedder())
    for path in ("/v1/chat/completions", "/v1/completions"):
        resp = await client.post(path, json=chat_body("hi"))
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "unsupported_endpoint"


async def test_an_engine_returning_the_wrong_number_of_vectors_is_a_500(make_client: ClientFactory) -> None:
    class Short(FakeEmbedder):
        async def embed(self, texts: list[str]) -> list[list[float]]:
            return []

    resp = await (await make_client(Short())).post("/v1/embeddings", json={"input": "x"})
    assert resp.status == 500
    assert (await resp.json())["error"]["code"] == "plugin_error"


def test_an_object_that_is_no_model_is_refused() -> None:
    with pytest.raises(TypeError, match="none of TextModel, EmbeddingModel, RerankModel and ImageModel"):
        build_app(object())


async def test_abort_ends_a_stream_with_an_error_frame(make_client: ClientFactory) -> None:
    model = RecordingEcho()
    client = await make_client(model)
    headers = {"X-Xinfd-Request-Id": "req-1"}
    resp = await client.post("/v1/chat/completions", json=chat_body(LONG, stream=True), headers=headers)
    assert resp.status == 200
    await resp.content.readuntil(b"\n\n")  # the role chunk: the stream is running
    abort = await client.post("/abort/req-1")
    assert await abort.json() == {"aborted": True}
    events = decode_events(await resp.read())
    assert events[-1]["error"]["code"] == "shutting_down"  # an error frame, no [DONE]: "abort" is not OpenAI's
    assert "[DONE]" not in events
    assert model.closed.is_set()
    assert model.deltas < 200
    assert await (await client.post("/abort/req-1")).json() == {"aborted": False}
    assert len(client.app[INFLIGHT_KEY]) == 0


async def test_abort_of_a_plain_request_returns_the_partial_text(make_client: ClientFactory) -> None:
    model = RecordingEcho()
    client = await make_client(model)
    pending = asyncio.create_task(
        client.post("/v1/completions", json={"prompt": LONG}, headers={"X-Xinfd-Request-Id": "req-2"})
    )
    await asyncio.wait_for(model.started.wait(), 5)
    await asyncio.sleep(0.05)
    assert await (await client.post("/abort/req-2")).json() == {"aborted": True}
    resp = await pending
    data = await resp.json()
    assert resp.status == 200
    assert data["choices"][0]["finish_reason"] == "abort"
    assert LONG.startswith(data["choices"][0]["text"])
    assert data["usage"]["completion_tokens"] == model.count_tokens(data["choices"][0]["text"])


async def test_abort_of_an_unknown_request(echo_client: Client) -> None:
    assert await (await echo_client.post("/abort/nobody")).json() == {"aborted": False}


async def test_a_dropped_stream_closes_the_engine_iterator(make_client: ClientFactory) -> None:
    model = RecordingEcho()
    client = await make_client(model)
    resp = await client.post("/v1/chat/completions", json=chat_body(LONG, stream=True))
    await resp.content.readuntil(b"\n\n")
    resp.close()  # the client goes away mid-stream
    await asyncio.wait_for(model.closed.wait(), 2)
    assert model.deltas < 200
    await asyncio.sleep(0)
    assert len(client.app[INFLIGHT_KEY]) == 0


async def test_a_dropped_plain_request_closes_the_engine_iterator(make_client: ClientFactory) -> None:
    model = RecordingEcho()
    client = await make_client(model)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.post("/v1/completions", json={"prompt": LONG}), 0.2)
    await asyncio.wait_for(model.closed.wait(), 2)
    assert model.deltas < 200


@pytest.fixture
def short_socket_dir() -> Any:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer than that.
    with tempfile.TemporaryDirectory(prefix="xw", dir="/tmp") as path:
        yield Path(path)


async def test_serve_on_a_unix_socket_and_abort_running_work_at_shutdown(short_socket_dir: Path) -> None:
    socket_path = short_socket_dir / "run" / "replica.sock"
    socket_path.parent.mkdir()
    socket_path.write_text("stale")  # left over by a crashed predecessor
    model = RecordingEcho()
    app = make_worker_app(
        model,
        model_uid="echo-1",
        model_name="echo",
        context_length=4096,
        max_tokens_cap=None,
        replica_label="echo-1-0",
    )
    server = asyncio.create_task(serve(app, str(socket_path), stop_signals=()))
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket_path))) as session:
        for _ in range(200):
            try:
                async with session.get("http://worker/health") as resp:
                    assert resp.status == 200
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.01)
        assert socket_path.stat().st_mode & 0o777 == 0o600
        async with session.post(
            "http://worker/v1/chat/completions", json=chat_body(LONG, stream=True)
        ) as resp:
            await resp.content.readuntil(b"\n\n")
            server.cancel()  # what SIGTERM does, minus the signal
            events = decode_events(await resp.read())
    with pytest.raises(asyncio.CancelledError):
        await server
    assert events[-1]["error"]["code"] == "shutting_down"  # an error frame, no [DONE]: "abort" is not OpenAI's
    assert "[DONE]" not in events
    assert model.closed.is_set()
    assert not socket_path.exists()


async def test_stopping_calls_the_models_close_once_after_the_last_request(short_socket_dir: Path) -> None:
    """A model's optional close() (an engine's batching thread) runs when the worker stops, off the loop and
    after in-flight work was aborted: without it transformers' batching thread died inside torch at exit and
    every replica stop ended in SIGABRT (exit status -6)."""
    import threading

    class ClosingEcho(RecordingEcho):
        def __init__(self) -> None:
            super().__init__()
            self.close_calls: list[tuple[bool, bool]] = []  # (generation already closed, ran off the loop)

        def close(self) -> None:
            self.close_calls.append((self.closed.is_set(), threading.current_thread() is not threading.main_thread()))

    socket_path = short_socket_dir / "replica.sock"
    model = ClosingEcho()
    app = make_worker_app(model, model_uid="echo-1", model_name="echo", context_length=4096, max_tokens_cap=None,
                          replica_label="echo-1-0")
    server = asyncio.create_task(serve(app, str(socket_path), stop_signals=()))
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket_path))) as session:
        for _ in range(200):
            try:
                async with session.get("http://worker/health"):
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.01)
        async with session.post("http://worker/v1/chat/completions", json=chat_body(LONG, stream=True)) as resp:
            await resp.content.readuntil(b"\n\n")
            assert model.close_calls == []
            server.cancel()
            await resp.read()
    with pytest.raises(asyncio.CancelledError):
        await server
    assert model.close_calls == [(True, True)]
