"""Control-API routes for model venvs (spec "Manage Virtual Environments").

* ``GET    /v1/venvs[?model=NAME][&verify=1]``       list (model, engine, python, size, packages, in use by);
  ``verify=1`` hashes every installed file against its ``RECORD`` and adds ``damaged`` (a list) to each row
* ``POST   /v1/venvs``                               build ahead of a launch; NDJSON progress, last line
  ``ready`` (with the venv) or ``error``. Body: ``model_name``, ``model_engine``, ``virtual_env_packages``,
  ``python`` (a version like 3.12 or an absolute interpreter path; default the daemon's)
* ``DELETE /v1/venvs/{model}[?engine=E&python=VER]`` remove (all of the model's if no filter; ``3.12`` matches
  every 3.12.x); 409 in use
* ``POST   /v1/venvs/gc``                            remove every unused venv and crash leftovers
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from aiohttp import web

from xinfd.api import management
from xinfd.api.bodies import control_json
from xinfd.api.state import STATE
from xinfd.errors import InvalidRequestError, UnknownModelError, XinfdError
from xinfd.events import TERMINAL_EVENTS, Failed, LaunchEvent, Ready
from xinfd.venvs.provider import VenvProvider
from xinfd.venvs.spec import check_requested_packages

log = logging.getLogger(__name__)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/venvs", list_venvs)
    app.router.add_post("/v1/venvs", create_venv)
    app.router.add_post("/v1/venvs/gc", gc_venvs)
    app.router.add_delete("/v1/venvs/{model}", remove_venvs)


def _provider(request: web.Request) -> VenvProvider:
    return management.venv_provider(request.app[STATE])


async def list_venvs(request: web.Request) -> web.Response:
    verify = request.query.get("verify", "0").lower()
    if verify not in ("0", "1", "true", "false"):
        raise InvalidRequestError(f"verify must be 0 or 1, got {verify!r}", param="verify")
    return web.json_response(await management.list_venvs(
        request.app[STATE], request.query.get("model"), verify=verify in ("1", "true")))


async def create_venv(request: web.Request) -> web.StreamResponse:
    provider = _provider(request)
    body = await control_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("model_name"), str):
        raise InvalidRequestError("body must be an object with model_name", param="model_name")
    unknown = set(body) - {"model_name", "model_engine", "virtual_env_packages", "python"}
    if unknown:
        raise InvalidRequestError(f"unknown field(s): {', '.join(sorted(unknown))}", param=min(unknown))
    packages = body.get("virtual_env_packages") or []
    if not isinstance(packages, list) or not all(isinstance(p, str) for p in packages):
        raise InvalidRequestError("virtual_env_packages must be a list of strings",
                                  param="virtual_env_packages")
    # The launch's rules (xinfd.supervisor.launch_request): a venv built ahead runs the same installers.
    check_requested_packages(packages, allow_direct_references=request.app[STATE].settings.allow_direct_references)
    manager = request.app[STATE].manager
    spec = manager.plugins.models.get(body["model_name"])
    if spec is None:
        raise UnknownModelError(f"unknown model {body['model_name']!r}", param="model_name")
    wanted = body.get("model_engine")
    # A venv is built for this engine whatever the launch toggle: the block's markers decide what is offered.
    engine = manager.choose_engine(spec, wanted.lower() if isinstance(wanted, str) else wanted, venv=True)
    # A bad spec, or a Python that is not on this machine, is a 400 before the stream starts.
    interpreter = await provider.resolve_python(body.get("python"))
    provider.make_spec(spec, engine, packages, interpreter)

    events: asyncio.Queue[LaunchEvent] = asyncio.Queue()

    async def run() -> None:
        try:
            path = await provider.create(spec, engine, packages, events.put, interpreter)
            rows = await asyncio.to_thread(provider.entries, spec.name)
            row = next((r for r in rows if r["path"] == str(path)), {"path": str(path)})
            await events.put(Ready(message=f"venv ready: {path}", venv=row))
        except XinfdError as exc:
            await events.put(Failed(code=exc.code, message=str(exc), status=exc.status))
        except Exception as exc:  # top of a task: log and report, never leave the client hanging
            log.exception("venv create for %s failed", spec.name)
            await events.put(Failed(code="venv_failed", message=str(exc)))

    task = asyncio.create_task(run(), name=f"venv create {spec.name}")
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson"})
    try:
        await response.prepare(request)
        while True:
            event = await events.get()
            await response.write(json.dumps(event.to_json()).encode() + b"\n")
            if event.kind in TERMINAL_EVENTS:
                break
    finally:
        if not task.done():  # the client went away: cancelling kills uv and removes the build directory
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    await response.write_eof()
    return response


async def remove_venvs(request: web.Request) -> web.Response:
    removed = await management.remove_venvs(
        request.app[STATE], request.match_info["model"], request.query.get("engine"), request.query.get("python"))
    return web.json_response({"removed": removed})


async def gc_venvs(request: web.Request) -> web.Response:
    return web.json_response({"removed": await _provider(request).gc()})
