"""Front end and control app built by their factories, exercised with aiohttp's test client (no processes)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.unit.test_models import TwoEngines
from xinfd.api.control import make_control_app
from xinfd.api.metrics import Metrics
from xinfd.api.openai import make_api_app
from xinfd.api.state import STATE, DaemonState
from xinfd.config import load_settings
from xinfd.plugins import make_plugin_manager
from xinfd.processes import SubprocessSpawner
from xinfd.supervisor import LaunchRequest, ModelManager, RunningModel
from xinfd.types import Platform

ClientFactory = Callable[[web.Application], Any]


def make_state(tmp_path: Path, **env: str) -> DaemonState:
    settings = load_settings(env={"XINFERENCE_HOME": str(tmp_path), **env})
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[TwoEngines()], env={})
    platform = Platform(system="Linux", machine="x86_64", python_version="3.11.7")
    manager = ModelManager(
        plugins=plugins,
        platform=platform,
        home=tmp_path,
        spawner=SubprocessSpawner(),
        stop_grace=1,
        launch_timeout=5,
    )
    return DaemonState(settings=settings, manager=manager, metrics=Metrics())


@pytest.fixture
async def api(tmp_path: Path, aiohttp_client: ClientFactory) -> TestClient:  # type: ignore[type-arg]
    client: TestClient = await aiohttp_client(make_api_app(make_state(tmp_path)))  # type: ignore[type-arg]
    return client


async def assert_error(resp: Any, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    body: dict[str, Any] = await resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert body["error"]["param"] == param
    return body


async def test_health(api: TestClient) -> None:  # type: ignore[type-arg]
    resp = await api.get("/health")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"
    api.app[STATE].draining = True  # type: ignore[index]
    assert (await api.get("/health")).status == 503


@pytest.mark.parametrize(
    ("data", "code", "param"),
    [
        (b"{not json", "invalid_request", None),
        (b"\xff\xfe", "invalid_request", None),
        (b"[1, 2]", "invalid_request", None),
        (b"[" * 10000 + b"]" * 10000, "invalid_request", None),
        (b'{"messages": []}', "invalid_request", "model"),
        (b'{"model": "ghost"}', "model_not_found", "model"),
    ],
)
async def test_bad_requests_get_json_errors(
    api: TestClient,
    data: bytes,
    code: str,  # type: ignore[type-arg]
    param: str | None,
) -> None:
    resp = await api.post("/v1/chat/completions", data=data, headers={"Content-Type": "application/json"})
    await assert_error(resp, 404 if code == "model_not_found" else 400, code, param)


async def test_unknown_route_and_method_are_json(api: TestClient) -> None:  # type: ignore[type-arg]
    await assert_error(await api.get("/v1/nothing"), 404, "not_found")
    await assert_error(await api.put("/v1/chat/completions"), 405, "method_not_allowed")


async def test_body_too_large_is_413(api: TestClient) -> None:  # type: ignore[type-arg]
    resp = await api.post(
        "/v1/completions", data=io.BytesIO(b"x" * (9 * 1024 * 1024)), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413
    assert "error" in await resp.json()


async def test_model_still_loading_is_503_with_retry_after(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    state = make_state(tmp_path)
    model = RunningModel(
        uid="m", spec=state.manager.plugins.models["m"], engine="cpu", request=LaunchRequest(model_name="m")
    )
    model.launch_task = asyncio.create_task(asyncio.sleep(30))
    state.manager.models["m"] = model
    client = await aiohttp_client(make_api_app(state))
    resp = await client.post("/v1/completions", json={"model": "m", "prompt": "x"})
    await assert_error(resp, 503, "model_not_ready")
    assert resp.headers["Retry-After"] == "2"
    listed = await (await client.get("/v1/models")).json()
    assert listed["data"][0]["id"] == "m" and listed["data"][0]["state"] == "LAUNCHING"
    model.launch_task.cancel()


async def test_metrics_exposed_and_can_be_disabled(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_api_app(make_state(tmp_path)))
    await client.post("/v1/completions", json={"model": "ghost", "prompt": "x"})
    text = await (await client.get("/metrics")).text()
    assert "# TYPE xinfd_requests_in_flight gauge" in text
    off = await aiohttp_client(make_api_app(make_state(tmp_path / "off", XINFERENCE_DISABLE_METRICS="1")))
    assert (await off.get("/metrics")).status == 404


async def test_control_api_engines_status_and_validation(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    client = await aiohttp_client(make_control_app(make_state(tmp_path)))
    engines = {e["name"]: e for e in await (await client.get("/v1/engines")).json()}
    assert engines["gpuonly"] == {
        "name": "gpuonly",
        "available": False,
        "reason": "needs a GPU; none found",
        "abilities": ["chat"],
        "description": "",
        "plugin": "TwoEngines",
    }
    assert engines["cpu"]["available"] is True
    status = await (await client.get("/v1/status")).json()
    assert status["models"] == 0 and status["engines"] == ["cpu", "gpuonly"]
    await assert_error(
        await client.post("/v1/models", json={"model_name": "m", "replica": -1}),
        400,
        "invalid_request",
        "replica",
    )
    await assert_error(await client.post("/v1/models", data=b"{"), 400, "invalid_request")
    await assert_error(await client.delete("/v1/models/ghost"), 404, "model_not_found")
    families = await (await client.get("/v1/families")).json()
    assert families[0]["model_name"] == "m"
