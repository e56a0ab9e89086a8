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

from xinfd.api import management
from xinfd.api.state import STATE
from xinfd.http_errors import parse_json
from xinfd.registry import describe

log = logging.getLogger(__name__)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/registrations", list_registrations)
    app.router.add_post("/v1/registrations", register)
    app.router.add_delete("/v1/registrations/{name}", unregister)


async def list_registrations(request: web.Request) -> web.Response:
    specs = management.registrations(request.app[STATE])
    return web.json_response([describe(s, "user") for s in sorted(specs.values(), key=lambda s: s.name)])


async def register(request: web.Request) -> web.Response:
    body = parse_json(await request.read())
    spec = management.register(request.app[STATE], body)
    return web.json_response(describe(spec, "user"))


async def unregister(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    management.unregister(request.app[STATE], name)
    return web.json_response({"unregistered": name})
