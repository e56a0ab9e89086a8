"""Control routes of the model registry, added by ``make_control_app`` through ``route_modules``.

* ``GET    /v1/registrations``          user-registered families (``xinfctl registrations``)
* ``POST   /v1/registrations``          register a family: the body is the spec JSON (``xinfctl register``)
* ``DELETE /v1/registrations/{name}``   remove a registration (``xinfctl unregister``)

The registry is the files under ``$XINFERENCE_HOME``; these routes update them and the daemon's family table
(``plugins.models``, what launches look names up in) together, so a registration is launchable at once.
"""

from __future__ import annotations

import logging

from aiohttp import web

from xinfd.api.bodies import control_json
from xinfd.api.state import STATE
from xinfd.registry import ModelRegistry, describe

log = logging.getLogger(__name__)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/registrations", list_registrations)
    app.router.add_post("/v1/registrations", register)
    app.router.add_delete("/v1/registrations/{name}", unregister)


def _registry(request: web.Request) -> ModelRegistry:
    return ModelRegistry.for_home(request.app[STATE].settings.home)


async def list_registrations(request: web.Request) -> web.Response:
    specs = _registry(request).registrations()
    return web.json_response([describe(s, "user") for s in sorted(specs.values(), key=lambda s: s.name)])


async def register(request: web.Request) -> web.Response:
    body = await control_json(request)
    spec = _registry(request).register(body, request.app[STATE].manager.plugins.models)
    return web.json_response(describe(spec, "user"))


async def unregister(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    _registry(request).unregister(name, request.app[STATE].manager.plugins.models)
    return web.json_response({"unregistered": name})
