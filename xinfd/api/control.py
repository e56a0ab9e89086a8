"""The control API, served as HTTP+JSON on the daemon's Unix socket (Docker Engine API style).

Routes (all JSON; errors use the same envelope as the front end, with a stable ``code``):

* ``GET  /v1/status``            daemon version, pid, uptime, addresses, plugin failures
* ``GET  /v1/engines``           every engine with ``available`` and ``reason``
* ``GET  /v1/families``          model families the daemon can launch
* ``GET  /v1/models``            launched models and their replicas
* ``POST /v1/models``            launch; streams progress as NDJSON, last line ``ready`` or ``error``
* ``GET  /v1/models/{uid}``      one launched model
* ``DELETE /v1/models/{uid}``    terminate (also cancels a launch in progress)
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from xinfd import __version__
from xinfd.api import control_gpus, control_ops, control_registry, control_venvs
from xinfd.api.bodies import CONTROL_MAX_BODY, control_json
from xinfd.api.middleware import error_middleware
from xinfd.api.peers import ControlAccess, peer_middleware, request_peer
from xinfd.api.state import STATE
from xinfd.supervisor import LaunchPolicy, LaunchRequest
from xinfd.types import ModelSpec

log = logging.getLogger(__name__)


def make_control_app(state: Any) -> web.Application:
    """Build the control app; tests call this directly with ``aiohttp_client``."""
    # SO_PEERCRED on every request: the socket's mode is the first gate, this is the second.
    access = _AccessHolder(state)
    app = web.Application(
        middlewares=[error_middleware, peer_middleware(access.current)], client_max_size=CONTROL_MAX_BODY
    )
    app[STATE] = state
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/engines", engines)
    app.router.add_get("/v1/families", families)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/models", launch)
    app.router.add_get("/v1/models/{uid}", get_model)
    app.router.add_delete("/v1/models/{uid}", terminate)
    # Feature areas (venvs, gpus, ...) keep their routes in their own modules, each listed here by its
    # ``add_routes(app)`` function.
    route_modules: tuple[Callable[[web.Application], None], ...] = (
        control_ops.add_routes,
        control_gpus.add_routes,
        control_venvs.add_routes,
        control_registry.add_routes,
    )
    for add_routes in route_modules:
        add_routes(app)
    return app


async def status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    manager = state.manager
    return web.json_response(
        {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - state.started, 3),
            "home": str(state.settings.home),
            "endpoint": state.front_end_url,
            "control_socket": str(state.settings.control_socket),
            "draining": state.draining,
            "models": len(manager.models),
            "replicas": sum(len(m.replicas) for m in manager.models.values()),
            "engines": sorted(manager.plugins.engines),
            "plugin_failures": [{"name": f.name, "error": f.error} for f in manager.plugins.failures],
            "gpus": [
                {"index": g.index, "name": g.name, "memory_mb": g.memory_mb} for g in manager.platform.gpus
            ],
        }
    )


async def engines(request: web.Request) -> web.Response:
    manager = request.app[STATE].manager
    plugins = manager.plugins
    rows = []
    for name, info in sorted(plugins.engines.items()):
        # Availability is asked for a model that this engine supports, so the answer is about the engine itself.
        model = next((m for m in plugins.models.values() if name in m.engines), None)
        model = model or ModelSpec(name=f"<any {name} model>", abilities=info.abilities, engines=(name,))
        avail = plugins.availability(name, model, manager.platform)
        rows.append(
            {
                "name": name,
                "available": avail.available,
                "reason": avail.reason,
                "abilities": list(info.abilities),
                "description": info.description,
                "plugin": plugins.engine_owner.get(name, ""),
            }
        )
    return web.json_response(rows)


async def families(request: web.Request) -> web.Response:
    specs = request.app[STATE].manager.families()
    return web.json_response(
        [
            {
                "model_name": s.name,
                "abilities": list(s.abilities),
                "engines": list(s.engines),
                "context_length": s.context_length,
                "description": s.description,
            }
            for s in sorted(specs.values(), key=lambda s: s.name)
        ]
    )


async def list_models(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].manager.list())


async def get_model(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].manager.get(request.match_info["uid"]).snapshot())


async def launch(request: web.Request) -> web.StreamResponse:
    """Start a launch, then stream its events; the launch continues if this client goes away."""
    body = await control_json(request)
    launch_request = LaunchRequest.from_json(body, LaunchPolicy.from_settings(request.app[STATE].settings))
    venvs = request.app[STATE].venvs
    if venvs is not None:  # a --python that is not on this machine is a 400, before anything starts
        await venvs.check_launch(launch_request)
    model = request.app[STATE].manager.start_launch(launch_request)
    log.info("launch of %s requested over the control socket (peer %s)", model.uid, _peer(request))
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    async for event in model.follow():
        await response.write(json.dumps(event).encode() + b"\n")
    await response.write_eof()
    return response


async def terminate(request: web.Request) -> web.Response:
    uid = request.match_info["uid"]
    log.info("terminate of %s requested over the control socket (peer %s)", uid, _peer(request))
    snapshot = await request.app[STATE].manager.terminate(uid)
    return web.json_response({"terminated": uid, "model": snapshot})


def _peer(request: web.Request) -> str:
    """The peer's uid/pid from SO_PEERCRED where available (logged with each mutating command)."""
    peer = request_peer(request)
    return "unknown" if peer is None else str(peer)


class _AccessHolder:
    """The control-socket access rules, rebuilt when SIGHUP swaps in new settings."""

    def __init__(self, state: Any) -> None:
        self._state = state
        self._settings: Any = None
        self._access = ControlAccess(uids=frozenset(), gids=frozenset())

    def current(self) -> ControlAccess:
        if self._state.settings is not self._settings:
            self._settings = self._state.settings
            self._access = ControlAccess.from_settings(self._settings)
        return self._access
