"""Operations routes of the control API: replica logs and the daemon's effective configuration.

``GET /v1/config`` answers the *running* daemon's settings as ``xinfd --print-config`` prints them (secrets
masked), so an operator can see what a SIGHUP reload changed, and which reloaded values wait for a restart.

Logs: ``xinfctl logs UID [--replica N] [--lines N] [--follow]``.

``GET /v1/models/{uid}/logs?replica=0&lines=200&follow=0`` answers ``text/plain``: the last ``lines`` lines of
the replica's log file, then (with ``follow=1``) new lines as they come, until the client goes away. Logs of a
model that is no longer running are still served from disk: after a crash is exactly when they are wanted.
The uid is checked against the launch uid pattern before it becomes a file name, so no path escapes the logs
directory.
"""

from __future__ import annotations

from aiohttp import web

from xinfd.api.state import STATE
from xinfd.config import describe
from xinfd.errors import InvalidRequestError, UnknownModelError
from xinfd.logs import follow, tail
from xinfd.names import MODEL_UID, check_name

MAX_LINES = 100_000


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models/{uid}/logs", replica_logs)
    app.router.add_get("/v1/config", effective_config)


async def effective_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.Response(text=describe(state.settings, state.pending), content_type="application/toml")


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidRequestError(f"{name} must be an integer {low}..{high}, got {raw!r}", param=name)
    return int(raw)


async def replica_logs(request: web.Request) -> web.StreamResponse:
    uid = check_name(request.match_info["uid"], MODEL_UID, param="uid")  # it becomes a file name
    replica = _int_param(request, "replica", 0, 0, 1 << 16)
    lines = _int_param(request, "lines", 200, 0, MAX_LINES)
    following = request.query.get("follow", "0") in ("1", "true", "yes")
    manager = request.app[STATE].manager
    path = manager.layout.replica(uid, replica).log_path
    model = manager.models.get(uid)
    if model is not None and replica >= len(model.replicas) and model.replicas:
        raise InvalidRequestError(f"model {uid!r} has replicas 0..{len(model.replicas) - 1}", param="replica")
    if not path.exists() and model is None:
        raise UnknownModelError(
            f"no log for model {uid!r} replica {replica} (is the uid right?)", param="uid"
        )
    response = web.StreamResponse(
        headers={"Content-Type": "text/plain; charset=utf-8", "X-Xinfd-Log-Path": str(path)}
    )
    await response.prepare(request)
    head = tail(path, lines)
    await response.write(head)
    if following:
        size = path.stat().st_size if path.exists() else 0
        async for chunk in follow(path, start=size):
            await response.write(chunk)
    await response.write_eof()
    return response
