"""Xinference's REST management API on the front end, for ``xinference-client`` and the integrations built on it.

Routes (Xinference's paths, bodies and answers; ``xinfd.api.xinference_mapping`` maps each field):

* ``GET    /v1/cluster/auth``                              ``{"auth": bool}``: whether to send the api_key (open)
* ``POST   /v1/models[?wait_ready=false]``                  launch; ``{"model_uid"}`` once ready (or at once)
* ``DELETE /v1/models/{uid}``                               terminate (also cancels a launch)
* ``GET    /v1/models/{uid}/progress``                      ``{"progress": 0..1, "stage", ...}`` of a launch
* ``POST   /v1/models/{uid}/cancel``                        cancel a launch in progress
* ``GET    /v1/model_registrations/{type}[?detailed=true]`` families of a type (``LLM``, ``embedding``, ``rerank``)
* ``GET    /v1/model_registrations/{type}/{name}``          one family
* ``POST   /v1/model_registrations/{type}``                 register ``{"model": <json>, "persist": true}``
* ``DELETE /v1/model_registrations/{type}/{name}``          unregister a user family
* ``GET    /v1/engines/{name}``, ``/v1/engines/{type}/{name}`` engines of a family and what each can launch
* ``GET    /v1/virtualenvs``, ``DELETE /v1/virtualenvs``    model venvs (``model_name``, ``model_engine``,
  ``python_version`` query parameters)
* ``GET    /v1/cluster/info``, ``/v1/cluster/devices``, ``/v1/cluster/version``, ``/v1/workers``,
  ``/v1/supervisor``                                         this one host as Xinference's one-node cluster

``GET /v1/models`` and ``GET /v1/models/{uid}`` are ``xinfd.api.openai``'s: one list serves both the openai SDK
(``data`` of ``{"id", "object": "model"}``) and Xinference's client (each item also carries ``model_type``,
``model_ability``, ...), as Xinference serves it. Access: ``xinfd.api.security`` (admin scope for management).
Errors keep xinfd's envelope and add Xinference's ``detail`` string, which its client reports.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from xinfd import __version__
from xinfd.api import management
from xinfd.api.security import (
    READ_PREFIXES,
    AuthenticationError,
    PermissionDeniedError,
    Scope,
    SecurityPolicy,
    required_scope,
)
from xinfd.api.state import STATE, DaemonState
from xinfd.api.xinference_mapping import check_model_type, describe, launch_request
from xinfd.api.xinference_registry import engine_params, family_description, registration_rows, spec_json
from xinfd.errors import InvalidRequestError, XinfdError
from xinfd.http_errors import error_response, parse_json
from xinfd.supervisor import LaunchPolicy, RunningModel

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_DOWNLOAD_EVENTS = frozenset({"downloading", "download_progress", "download_retry"})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/cluster/auth", cluster_auth)
    r.add_post("/v1/models", launch)
    r.add_delete("/v1/models/{uid}", terminate)
    r.add_get("/v1/models/{uid}/progress", progress)
    r.add_post("/v1/models/{uid}/cancel", cancel)
    r.add_get("/v1/model_registrations/{model_type}", list_registrations)
    r.add_post("/v1/model_registrations/{model_type}", register)
    r.add_get("/v1/model_registrations/{model_type}/{model_name}", get_registration)
    r.add_delete("/v1/model_registrations/{model_type}/{model_name}", unregister)
    r.add_get("/v1/engines/{model_name}", engines)
    r.add_get("/v1/engines/{model_type}/{model_name}", engines)
    r.add_get("/v1/virtualenvs", list_venvs)
    r.add_delete("/v1/virtualenvs", remove_venvs)
    r.add_get("/v1/cluster/info", cluster_info)
    r.add_get("/v1/cluster/devices", cluster_devices)
    r.add_get("/v1/cluster/version", cluster_version)
    r.add_get("/v1/workers", workers)
    r.add_get("/v1/supervisor", supervisor)


# Inference routes that never stream, whose refusals Xinference's client also reads as ``detail``.
_UNSTREAMED_INFERENCE = frozenset({"/v1/rerank", "/v1/embeddings"})


def with_detail(path: str, status: int, body: bytes) -> bytes:
    """A replica's refusal on an unstreamed inference route, with Xinference's ``detail`` added (the replica
    answers in OpenAI's envelope only); any other answer unchanged."""
    if status < 400 or path not in _UNSTREAMED_INFERENCE:
        return body
    try:
        decoded = json.loads(body)
        message = decoded["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body
    return json.dumps({**decoded, "detail": message}).encode() if "detail" not in decoded else body


@web.middleware
async def detail_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors of management routes (and access refusals anywhere) also carry Xinference's ``detail``.

    Xinference's client shows ``response.json()["detail"]`` and nothing else; without it a refusal reads as a
    bare "403 Client Error". Inference routes are left to the error middleware (streams may be under way).
    """
    try:
        return await handler(request)
    except XinfdError as exc:
        management_route = required_scope(request.path, request.method) is Scope.ADMIN or any(
            request.path.startswith(p + "/") for p in READ_PREFIXES) or request.path in _UNSTREAMED_INFERENCE
        if not management_route and not isinstance(exc, AuthenticationError | PermissionDeniedError):
            raise
        response = error_response(exc)
        body = json.loads(response.body) if isinstance(response.body, bytes) else {}
        body["detail"] = exc.message
        return web.json_response(body, status=response.status, headers={
            k: v for k, v in response.headers.items() if k.lower() in ("www-authenticate", "retry-after")})


def _state(request: web.Request) -> DaemonState:
    return request.app[STATE]


def _address(state: DaemonState) -> str:
    return state.front_end_url or f"{state.settings.host}:{state.settings.port}"


def card(state: DaemonState, model: RunningModel) -> dict[str, Any]:
    """A launched model as both APIs read it: OpenAI's model object, then Xinference's description."""
    gpus = [g for p in state.manager.slots.placements(model.uid) for g in p.gpu_indices]
    return {
        "id": model.uid,
        "object": "model",
        "created": int(model.created),
        "owned_by": "xinfd",
        **describe(model, address=_address(state), model_hub=state.settings.model_src, gpus=gpus),
        "abilities": list(model.spec.abilities),
        "state": model.state,
        # What each replica imported (its worker's /health ``libraries``), by replica label: replicas of one
        # model can differ only across a relaunch, models on one daemon differ by venv.
        "libraries": {r.label: dict(r.libraries) for r in model.replicas if r.libraries},
    }


async def cluster_auth(request: web.Request) -> web.Response:
    policy = SecurityPolicy.from_settings(_state(request).settings)
    return web.json_response({"auth": policy.authenticates})


async def _json(request: web.Request) -> Any:
    # The shared parser: bad JSON, a too-long integer or too-deep nesting is a 400 saying so.
    return parse_json(await request.read())


async def launch(request: web.Request) -> web.Response:
    """Launch; with ``wait_ready`` (the default) answer once the model is ready, as Xinference does.

    The launch belongs to the manager: a client that gives up waiting does not cancel it (``/cancel`` does).
    """
    state = _state(request)
    wait = request.query.get("wait_ready", "true").lower() not in ("0", "false", "no")
    body = await _json(request)
    launch = launch_request(body, state.manager.families(), model_src=state.settings.model_src,
                            policy=LaunchPolicy.from_settings(state.settings))
    model = await management.start_launch(state, launch, via=f"over HTTP from {request.remote}")
    if wait:
        await state.manager.wait_until_launched(model)
    return web.json_response({"model_uid": model.uid})


async def terminate(request: web.Request) -> web.Response:
    uid = request.match_info["uid"]
    await management.terminate(_state(request), uid, via=f"over HTTP from {request.remote}")
    return web.json_response(None)


def launch_progress(model: RunningModel) -> dict[str, Any]:
    """Xinference's progress of a launch from its events: preparing (download, venv) up to 0.5, then the
    replicas' start; 1.0 once launched."""
    kinds = [e["event"] for e in model.events]
    total = max(model.request.replica, 1)
    ready = kinds.count("replica_ready")
    if "ready" in kinds or model.state != "LAUNCHING":
        value, stage = (1.0, "ready") if model.launch_error is None else (0.0, "error")
    elif "replica_starting" in kinds:
        value, stage = 0.5 + 0.5 * ready / total, "loading"
    elif kinds and kinds[-1] in _DOWNLOAD_EVENTS:
        value, stage = 0.1, "downloading"
    elif kinds and kinds[-1] == "venv":
        value, stage = 0.3, "installing"
    else:
        value, stage = 0.0, "launching"
    return {
        "progress": round(value, 3),
        "stage": stage,
        "download_files": [],
        "replicas": [{"replica_id": r.index, "replica_model_uid": r.label, "stage": r.state.value}
                     for r in model.replicas],
        "events": model.events[-20:],
    }


async def progress(request: web.Request) -> web.Response:
    return web.json_response(launch_progress(_state(request).manager.get(request.match_info["uid"])))


async def cancel(request: web.Request) -> web.Response:
    await management.cancel_launch(_state(request), request.match_info["uid"],
                                   via=f"over HTTP from {request.remote}")
    return web.json_response(None)


def _detailed(request: web.Request) -> bool:
    return request.query.get("detailed", "false").lower() in ("1", "true", "yes")


async def list_registrations(request: web.Request) -> web.Response:
    state = _state(request)
    kind = check_model_type(request.match_info["model_type"])
    rows = registration_rows(state.manager.families(), management.family_sources(state), kind,
                             _detailed(request))
    return web.json_response(rows)


async def get_registration(request: web.Request) -> web.Response:
    state = _state(request)
    kind = check_model_type(request.match_info["model_type"])
    spec = management.family(state, request.match_info["model_name"])
    check_model_type(kind, spec)
    return web.json_response(family_description(spec, management.family_sources(state)[spec.name]))


async def register(request: web.Request) -> web.Response:
    state = _state(request)
    body = management.parse_json_object(await _json(request), "registration body")
    if body.get("persist") is False:
        raise InvalidRequestError(
            "persist: false is not supported: xinfd keeps registrations as files, so they survive restarts; "
            "send persist: true", param="persist")
    if body.get("worker_ip") is not None:
        raise InvalidRequestError("worker_ip is not supported: xinfd is one daemon per host", param="worker_ip")
    unknown = sorted(set(body) - {"model", "persist", "worker_ip"})
    if unknown:
        raise InvalidRequestError(f"unknown field(s): {', '.join(unknown)}", param=unknown[0])
    data = spec_json(request.match_info["model_type"], body.get("model"), state.manager.plugins.engines)
    spec = management.register(state, data)
    return web.json_response(family_description(spec, "user"))


async def unregister(request: web.Request) -> web.Response:
    state = _state(request)
    kind = check_model_type(request.match_info["model_type"])
    name = request.match_info["model_name"]
    spec = management.registrations(state).get(name)
    if spec is not None:
        check_model_type(kind, spec)
    management.unregister(state, name)
    return web.json_response(None)


async def engines(request: web.Request) -> web.Response:
    state = _state(request)
    spec = management.family(state, request.match_info["model_name"])
    if "model_type" in request.match_info:
        check_model_type(request.match_info["model_type"], spec)
    platform = state.manager.platform
    venv = request.query.get("enable_virtual_env")
    if venv is not None:  # availability depends on whether the engine's packages would be installed
        platform = replace(platform, venv_enabled=venv.lower() in ("1", "true", "yes"))
    return web.json_response(engine_params(spec, state.manager.plugins, platform))


def _venv_row(row: dict[str, Any], address: str) -> dict[str, Any]:
    return {
        "model_name": row.get("model_name"),
        "model_engine": row.get("model_engine"),
        "path": row.get("path"),
        "real_path": row.get("path"),
        "python_version": row.get("python_version"),
        "actor_ip_address": address,
        "in_use_by": row.get("in_use_by", []),
    }


async def list_venvs(request: web.Request) -> web.Response:
    state = _state(request)
    _refuse_worker_ip(request)
    rows = await management.list_venvs(state, request.query.get("model_name"))
    engine = request.query.get("model_engine")
    rows = [r for r in rows if engine is None or r.get("model_engine") == engine.lower()]
    return web.json_response({"list": [_venv_row(r, _address(state)) for r in rows]})


async def remove_venvs(request: web.Request) -> web.Response:
    _refuse_worker_ip(request)
    name = request.query.get("model_name")
    if not name:
        raise InvalidRequestError("model_name parameter is required", param="model_name")
    engine = request.query.get("model_engine")
    removed = await management.remove_venvs(_state(request), name, engine.lower() if engine else None,
                                            request.query.get("python_version"))
    return web.json_response({"result": bool(removed), "removed": removed})


def _refuse_worker_ip(request: web.Request) -> None:
    if request.query.get("worker_ip"):
        raise InvalidRequestError("worker_ip is not supported: xinfd is one daemon per host", param="worker_ip")


def _host_facts(state: DaemonState, detailed: bool) -> dict[str, Any]:
    gpus = state.manager.platform.gpus
    facts: dict[str, Any] = {
        "ip_address": _address(state),
        "gpu_count": len(gpus),
        "gpu_vram_total": f"{sum(g.memory_mb for g in gpus)}MiB" if gpus else 0,
    }
    if detailed:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        facts.update({"cpu_count": os.cpu_count(), "mem_total": pages * page,
                      "gpus": [{"index": g.index, "name": g.name, "memory_mb": g.memory_mb} for g in gpus]})
    return facts


async def cluster_info(request: web.Request) -> web.Response:
    """One host: the supervisor and the worker are the same daemon."""
    state = _state(request)
    facts = _host_facts(state, _detailed(request))
    return web.json_response([{"node_type": "Supervisor", **facts}, {"node_type": "Worker", **facts}])


async def cluster_devices(request: web.Request) -> web.Response:
    return web.json_response(len(_state(request).manager.platform.gpus))


async def cluster_version(request: web.Request) -> web.Response:
    return web.json_response({"version": __version__, "full-revisionid": None, "server": "xinfd"})


async def workers(request: web.Request) -> web.Response:
    state = _state(request)
    models = {m.uid: card(state, m) for m in state.manager.models.values()}
    return web.json_response([{"work-ip": _address(state), "models": models}])


async def supervisor(request: web.Request) -> web.Response:
    return web.json_response({"supervisor_ip": _address(_state(request))})

