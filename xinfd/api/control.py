"""The control API, served as HTTP+JSON on the daemon's Unix socket (Docker Engine API style).

Routes (all JSON; errors use the same envelope as the front end, with a stable ``code``):

* ``GET  /v1/status``            daemon version, pid, uptime, addresses, plugin failures
* ``GET  /v1/engines``           every engine with ``available`` and ``reason`` (``?model=NAME``: that
                                  family's engines, venv markers included)
* ``GET  /v1/families``          model families the daemon can launch
* ``GET  /v1/models``            launched models and their replicas
* ``POST /v1/models``            launch; streams progress as NDJSON, last line ``ready`` or ``error``
* ``GET  /v1/models/{uid}``      one launched model
* ``DELETE /v1/models/{uid}``    terminate (also cancels a launch in progress)

The same routes are mounted on the front end at ``/control`` (``make_remote_control_app``) for ``xinfctl
--endpoint``: there the front end's access checks apply (admin scope, allowed IPs) instead of SO_PEERCRED.
Handlers call ``xinfd.api.management``, as the Xinference-compatible HTTP routes do.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from xinfd import __version__
from xinfd.api import control_gpus, control_ops, control_registry, control_venvs, management
from xinfd.api.bodies import CONTROL_MAX_BODY, control_json
from xinfd.api.middleware import error_middleware
from xinfd.api.peers import ControlAccess, peer_middleware, request_peer
from xinfd.api.state import STATE
from xinfd.errors import InvalidRequestError, UnknownModelError
from xinfd.supervisor import LaunchPolicy, LaunchRequest, ModelManager
from xinfd.types import ModelSpec

log = logging.getLogger(__name__)


CONTROL_PREFIX = "/control"


def make_control_app(state: Any) -> web.Application:
    """Build the control app; tests call this directly with ``aiohttp_client``."""
    # SO_PEERCRED on every request: the socket's mode is the first gate, this is the second.
    access = _AccessHolder(state)
    app = web.Application(
        middlewares=[error_middleware, peer_middleware(access.current)], client_max_size=CONTROL_MAX_BODY
    )
    add_control_routes(app, state)
    return app


def make_remote_control_app(state: Any) -> web.Application:
    """The control routes for the front end's ``/control`` mount; the parent app's middlewares guard them."""
    app = web.Application(client_max_size=1024 * 1024)
    add_control_routes(app, state)
    return app


def add_control_routes(app: web.Application, state: Any) -> None:
    """Every control route, on the socket's app or the front end's ``/control`` sub-app."""
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
            # The launch default of the venv switch (a launch's enable_virtual_env overrides it); the web
            # console's launch form starts from it.
            "enable_virtual_env": state.settings.enable_virtual_env,
            "models": len(manager.models),
            "replicas": sum(len(m.replicas) for m in manager.models.values()),
            "engines": sorted(manager.plugins.engines),
            "plugin_failures": [{"name": f.name, "error": f.error} for f in manager.plugins.failures],
            "fork_servers": state.fork_servers(),
            "gpus": [
                {"index": g.index, "name": g.name, "memory_mb": g.memory_mb} for g in manager.platform.gpus
            ],
        }
    )


async def engines(request: web.Request) -> web.Response:
    manager = request.app[STATE].manager
    plugins = manager.plugins
    if "model" in request.query:
        return web.json_response(model_engines(manager, request.query["model"], request.query.get("venv")))
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


def model_engines(manager: ModelManager, name: str, venv: str | None) -> list[dict[str, Any]]:
    """``GET /v1/engines?model=NAME[&venv=true|false]``: each engine of the family, available for it or why not
    (the daemon's venv toggle unless ``venv`` says; with venvs on, the block's markers count)."""
    spec = manager.plugins.models.get(name)
    if spec is None:
        known = ", ".join(sorted(manager.plugins.models)) or "none"
        raise UnknownModelError(f"unknown model {name!r} (known: {known})", param="model")
    platform = manager.platform
    if venv is not None:
        if venv.lower() not in ("true", "false", "1", "0"):
            raise InvalidRequestError(f"venv must be true or false, got {venv!r}", param="venv")
        platform = replace(platform, venv_enabled=venv.lower() in ("true", "1"))
    rows = []
    for engine in spec.engines:
        if engine not in manager.plugins.engines:
            rows.append({"name": engine, "available": False, "reason": "not installed in this daemon"})
            continue
        avail = manager.plugins.availability(engine, spec, platform)
        rows.append({"name": engine, "available": avail.available, "reason": avail.reason})
    return rows


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
    model = await management.start_launch(request.app[STATE], launch_request, via=_peer(request))
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    async for event in model.follow():
        await response.write(json.dumps(event).encode() + b"\n")
    await response.write_eof()
    return response


async def terminate(request: web.Request) -> web.Response:
    uid = request.match_info["uid"]
    snapshot = await management.terminate(request.app[STATE], uid, via=_peer(request))
    return web.json_response({"terminated": uid, "model": snapshot})


def _peer(request: web.Request) -> str:
    """Who asked, for the log line of each mutating command: the socket peer's uid/pid (SO_PEERCRED), or the
    client address on the front end's ``/control`` mount."""
    peer = request_peer(request)
    if peer is not None:
        return f"over the control socket (peer {peer})"
    if request.transport is not None and request.transport.get_extra_info("peername") is not None:
        return f"over HTTP from {request.remote}"
    return "over the control socket (peer unknown)"


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
