"""The balancer's view of one daemon: per-model readiness, the drain order, the naming headers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.unit.api.test_front_end import ClientFactory, make_state
from xinfd.api.openai import make_api_app
from xinfd.api.readiness import HOST_HEADER, daemon_name, is_model_readiness_path
from xinfd.api.security import Scope, required_scope
from xinfd.api.state import DaemonState
from xinfd.config import load_settings
from xinfd.lifecycle import Lifecycle
from xinfd.replicas import ReplicaState
from xinfd.supervisor import LaunchRequest, RunningModel


def add_model(state: DaemonState, uid: str, replica_states: list[ReplicaState]) -> RunningModel:
    """A launched model whose replicas are in ``replica_states`` (stand-ins: the route reads state only)."""
    model = RunningModel(
        uid=uid, spec=state.manager.plugins.models["m"], engine="cpu", request=LaunchRequest(model_name="m")
    )
    model.replicas = [  # type: ignore[list-item]  # only .state and .outstanding are read
        SimpleNamespace(
            state=s,
            outstanding=0,
            index=i,
            is_ready=s is ReplicaState.READY,
            restarts=0,
            pid=None,
            gpu_indices=(),
            label=f"{uid}-r{i}",
            libraries={},
        )
        for i, s in enumerate(replica_states)
    ]
    state.manager.models[uid] = model
    return model


async def test_model_readiness_route(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    state = make_state(tmp_path, XINFD_DAEMON_NAME="node-a")
    add_model(state, "up", [ReplicaState.READY, ReplicaState.BACKOFF])
    add_model(state, "down", [ReplicaState.BACKOFF])
    client = await aiohttp_client(make_api_app(state))

    resp = await client.get("/health/models/up")
    body = await resp.json()
    assert resp.status == 200, body
    assert body == {
        "status": "ready",
        "model": "up",
        "host": "node-a",
        "state": "DEGRADED",
        "ready_replicas": 1,
        "replicas": 2,
    }
    assert resp.headers[HOST_HEADER] == "node-a"
    down = await client.get("/health/models/down")
    assert down.status == 503 and (await down.json())["status"] == "not_ready"
    ghost = await client.get("/health/models/ghost")
    assert ghost.status == 404 and (await ghost.json())["status"] == "not_served"
    assert (await client.get("/health/models/up/extra")).status == 404  # one segment only

    state.manager.models["up"].terminating = True
    assert (await client.get("/health/models/up")).status == 503


async def test_withdrawn_daemon_fails_health_but_still_serves(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    """The drain grace: health checks fail at once, requests keep being answered (with Connection: close)."""
    state = make_state(tmp_path)
    add_model(state, "up", [ReplicaState.READY])
    client = await aiohttp_client(make_api_app(state))
    assert (await client.get("/health")).status == 200
    assert (await client.get("/v1/models")).headers.get("Connection", "").lower() != "close"

    state.withdrawn = True
    health = await client.get("/health")
    assert health.status == 503 and (await health.json())["status"] == "draining"
    ready = await client.get("/health/models/up")
    assert ready.status == 503 and (await ready.json())["status"] == "draining"
    served = await client.get("/v1/models")
    assert served.status == 200
    assert served.headers["Connection"].lower() == "close"
    assert state.in_flight == 0  # health checks never counted as requests in flight

    state.draining = True
    refused = await client.post("/v1/completions", json={"model": "up", "prompt": "x"})
    assert refused.status == 503 and (await refused.json())["error"]["code"] == "shutting_down"
    assert refused.headers["Connection"].lower() == "close"
    assert (await client.get("/health/models/up")).status == 503  # still answered while draining


async def test_readiness_needs_no_key_but_keeps_the_ip_check(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    state = make_state(tmp_path, XINFD_API_KEYS="sk-full-0123456789")
    add_model(state, "up", [ReplicaState.READY])
    client = await aiohttp_client(make_api_app(state))
    assert (await client.get("/health/models/up")).status == 200
    assert (await client.get("/health/models/up/x")).status == 401
    assert (await client.get("/v1/models")).status == 401
    denied = await aiohttp_client(make_api_app(make_state(tmp_path / "d", XINFERENCE_ALLOWED_IPS="10.0.0.0/8")))
    assert (await denied.get("/health/models/up")).status == 403


def test_readiness_paths_and_scopes() -> None:
    assert is_model_readiness_path("/health/models/qwen2.5-7b")
    for path in ("/health/models/", "/health/models/a/b", "/health/models", "/x/health/models/a"):
        assert not is_model_readiness_path(path), path
        assert required_scope(path) is Scope.INFERENCE, path
    assert required_scope("/health/models/a") is None


def test_daemon_name_defaults_to_the_hostname(tmp_path: Path) -> None:
    import socket

    assert daemon_name(load_settings(env={"XINFERENCE_HOME": str(tmp_path)})) == socket.gethostname()
    named = load_settings(env={"XINFERENCE_HOME": str(tmp_path), "XINFD_DAEMON_NAME": "gpu-7"})
    assert daemon_name(named) == "gpu-7"


def _lifecycle_state(tmp_path: Path, **env: str) -> Any:
    return SimpleNamespace(
        settings=load_settings(env={"XINFERENCE_HOME": str(tmp_path), **env}),
        manager=SimpleNamespace(models={}, log_dir=tmp_path),
        withdrawn=False,
        draining=False,
        in_flight=0,
        front_end_url="http://127.0.0.1:1",
    )


async def test_drain_withdraws_readiness_before_refusing(tmp_path: Path) -> None:
    state = _lifecycle_state(tmp_path, XINFD_DRAIN_GRACE="0.3", XINFD_DRAIN_TIMEOUT="5")
    state.in_flight = 1
    drain = asyncio.create_task(Lifecycle(state).drain())
    await asyncio.sleep(0.1)
    assert state.withdrawn and not state.draining  # the grace: not ready, still accepting
    await asyncio.sleep(0.4)
    assert state.draining and not drain.done()  # now refusing, and waiting for the request in flight
    state.in_flight = 0
    await asyncio.wait_for(drain, timeout=2)


async def test_no_grace_refuses_at_once(tmp_path: Path) -> None:
    state = _lifecycle_state(tmp_path)
    assert state.settings.drain_grace == 0
    await asyncio.wait_for(Lifecycle(state).drain(), timeout=2)
    assert state.withdrawn and state.draining


@pytest.mark.parametrize("value", ["-1", "soon"])
def test_drain_grace_is_checked(tmp_path: Path, value: str) -> None:
    from xinfd.errors import ConfigError

    with pytest.raises(ConfigError, match="XINFD_DRAIN_GRACE"):
        load_settings(env={"XINFERENCE_HOME": str(tmp_path), "XINFD_DRAIN_GRACE": value})

