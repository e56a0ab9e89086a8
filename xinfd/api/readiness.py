"""What a load balancer asks of one daemon: is it ready for this model, and who answered.

``GET /health/models/{uid}`` is the per-model readiness route that HAProxy's ``option httpchk`` and a
Kubernetes readiness probe call (``contrib/haproxy``, ``contrib/kubernetes``):

* 200 ``{"status": "ready"}`` while the model has at least one READY replica and the daemon is not draining;
* 503 ``{"status": "draining"}`` from the moment SIGTERM withdraws readiness (``xinfd.lifecycle``), and
  503 ``{"status": "not_ready"}`` while the model loads, recovers or terminates;
* 404 ``{"status": "not_served"}`` when this daemon does not run the model at all.

The answer is read from the supervisor's in-memory state: no replica round trip, no queue, no lock, so a check
is never stuck behind inference. Like ``/health`` it needs no API key (``xinfd.api.security``) and is served
while draining (``xinfd.api.middleware``), because a balancer must see the 503 to move away.

Every front-end response also names the daemon (``X-Xinfd-Host``: ``daemon_name``, else the hostname), next
to the replica header the proxy adds, so a client or a balancer log can tell which host and replica served a
request. While readiness is withdrawn, responses carry ``Connection: close``: a balancer's pooled connections
to a draining daemon end with the request they carried instead of lingering until the replicas stop.
"""

from __future__ import annotations

import re
import socket
from typing import Any

from aiohttp import web

from xinfd.api.state import STATE, DaemonState
from xinfd.replicas import ReplicaState

HOST_HEADER = "X-Xinfd-Host"
MODEL_READINESS_PREFIX = "/health/models/"
# Exactly one path segment after the prefix: what the route matches, and what the access check exempts.
MODEL_READINESS_PATH = re.compile(r"^/health/models/[^/]+$")


def daemon_name(settings: Any) -> str:
    """The name this daemon gives itself in headers: ``daemon_name`` or the machine's hostname."""
    name: str | None = settings.daemon_name
    return name or socket.gethostname()


def is_model_readiness_path(path: str) -> bool:
    return MODEL_READINESS_PATH.match(path) is not None


def model_readiness(state: DaemonState, uid: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of the readiness of ``uid`` on this daemon; pure, cheap, never awaits."""
    host = daemon_name(state.settings)
    model = state.manager.models.get(uid)
    if model is None:
        return 404, {"status": "not_served", "model": uid, "host": host}
    ready = sum(1 for r in model.replicas if r.state is ReplicaState.READY)
    body: dict[str, Any] = {
        "model": uid,
        "host": host,
        "state": model.state,
        "ready_replicas": ready,
        "replicas": len(model.replicas),
    }
    if state.withdrawn or state.draining:
        return 503, {"status": "draining", **body}
    if ready == 0 or model.terminating:
        return 503, {"status": "not_ready", **body}
    return 200, {"status": "ready", **body}


async def model_health(request: web.Request) -> web.Response:
    status, body = model_readiness(request.app[STATE], request.match_info["uid"])
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


async def _name_response(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: name the daemon; close connections once readiness is withdrawn."""
    state = request.app[STATE]
    response.headers[HOST_HEADER] = daemon_name(state.settings)
    if state.withdrawn or state.draining:
        # Both: the header tells the peer (aiohttp may have composed its headers before this hook runs), and
        # force_close makes this server end the connection after the response.
        response.headers["Connection"] = "close"
        response.force_close()


def install_readiness(app: web.Application) -> None:
    """Add the per-model readiness route and the daemon-naming response hook to the front-end app."""
    app.router.add_get(MODEL_READINESS_PREFIX + "{uid}", model_health)
    app.on_response_prepare.append(_name_response)
