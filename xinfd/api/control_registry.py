"""Control routes of the model registry, added by ``make_control_app`` through ``route_modules``.

* ``GET    /v1/registrations``          user-registered families (``xinfctl registrations``)
* ``POST   /v1/registrations``          register a family: the body is the spec JSON (``xinfctl register``)
* ``DELETE /v1/registrations/{name}``   remove a registration (``xinfctl unregister``)

The registry is the files under ``$XINFERENCE_HOME``; these routes update them and the daemon's family table
(``plugins.models``, what launches look names up in) together, so a registration is launchable at once.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from xinfd.api import management
from xinfd.api.bodies import control_json
from xinfd.api.state import STATE
from xinfd.errors import InvalidRequestError
from xinfd.registry import describe
from xinfd.venvs.spec import direct_reference

log = logging.getLogger(__name__)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/registrations", list_registrations)
    app.router.add_post("/v1/registrations", register)
    app.router.add_delete("/v1/registrations/{name}", unregister)


async def list_registrations(request: web.Request) -> web.Response:
    specs = management.registrations(request.app[STATE])
    return web.json_response([describe(s, "user") for s in sorted(specs.values(), key=lambda s: s.name)])


async def register(request: web.Request) -> web.Response:
    body = await control_json(request)
    if not request.app[STATE].settings.allow_direct_references:
        _refuse_direct_references(body)
    spec = management.register(request.app[STATE], body)
    return web.json_response(describe(spec, "user"))


async def unregister(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    management.unregister(request.app[STATE], name)
    return web.json_response({"unregistered": name})


def _refuse_direct_references(body: Any) -> None:
    """A family registered over the socket installs its ``virtualenv.packages`` at launch: a direct reference
    there would run code of the registrant's choosing, as in ``-vp`` (``allow_direct_references``)."""
    virtualenv = body.get("virtualenv") if isinstance(body, dict) else None
    packages = virtualenv.get("packages") if isinstance(virtualenv, dict) else None
    for package in packages if isinstance(packages, list) else ():
        what = direct_reference(package) if isinstance(package, str) else None
        if what is not None:
            raise InvalidRequestError(
                f"virtualenv package {package!r} is {what}; refused unless the operator sets "
                "allow_direct_references (XINFD_ALLOW_DIRECT_REFERENCES=1)",
                param="virtualenv",
            )
