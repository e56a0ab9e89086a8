"""Control routes of the GPU slot table and live scaling, added to the control app by
``make_control_app`` through its ``route_modules``.

* ``GET  /v1/gpus``                    each GPU with what holds it and why, and where the inventory came from
                                       (NVML, the config file, the environment) or why NVML gave none
* ``POST /v1/models/{uid}/scale``      ``{"replicas": N}``: add or remove replicas live (``xinfctl scale``)
"""

from __future__ import annotations

import logging

from aiohttp import web

from xinfd.api.bodies import control_json
from xinfd.api.state import STATE
from xinfd.errors import InvalidRequestError
from xinfd.gpus import describe_inventory

log = logging.getLogger(__name__)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/gpus", list_gpus)
    app.router.add_post("/v1/models/{uid}/scale", scale)


async def list_gpus(request: web.Request) -> web.Response:
    """``gpus``: a list of objects with ``index``, ``name``, ``memory_mb``, ``free_mb`` and ``replicas`` (placed
    there), each replica entry with its label, its GPUs, the placement reason and the replica's state;
    ``inventory``: ``source`` ("NVML", "config file PATH", "environment variable XINFD_GPUS"), ``nvml_error``
    (why NVML listed nothing, or null) and ``summary`` (the one line ``xinfctl`` prints); ``cpus``: the CPU
    thread budget (``xinfd.cpus.cpu_snapshot``: the daemon's cores, each CPU replica's threads, cores, reason).
    """
    manager = request.app[STATE].manager
    states = {r.label: r.state.value for m in manager.models.values() for r in m.replicas}
    rows = manager.slots.snapshot()
    for row in rows:
        for replica in row["replicas"]:
            replica["state"] = states.get(replica["label"], "PLACED")  # placed, its process not yet made
    platform = manager.platform
    return web.json_response(
        {
            "inventory": {
                "source": platform.gpu_source,
                "nvml_available": platform.nvml_available,
                "nvml_error": platform.nvml_error,
                "summary": describe_inventory(platform),
            },
            "strategy": manager.slots.strategy,
            "allow_multi_replica_per_gpu": manager.slots.allow_multi,
            "gpus": rows,
            "cpus": manager.slots.cpu_snapshot(),
        }
    )


async def scale(request: web.Request) -> web.Response:
    uid = request.match_info["uid"]
    body = await control_json(request)
    if not isinstance(body, dict) or set(body) != {"replicas"}:
        raise InvalidRequestError('expected {"replicas": N}', param="replicas")
    log.info("scale of %s to %r replicas requested over the control socket", uid, body["replicas"])
    snapshot = await request.app[STATE].manager.scale(uid, body["replicas"])
    return web.json_response(snapshot)
