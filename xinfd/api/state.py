"""Typed application state shared by the front end and the control API (no module globals)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from xinfd.api.metrics import Metrics
    from xinfd.config import Settings
    from xinfd.supervisor import ModelManager
    from xinfd.venvs.provider import VenvProvider


@dataclass(slots=True)
class DaemonState:
    """What request handlers need: settings, the model manager, metrics, and whether we are draining."""

    settings: Settings
    manager: ModelManager
    metrics: Metrics
    started: float = field(default_factory=time.time)
    # SIGTERM first withdraws readiness (/health 503) while requests are still served for drain_grace seconds,
    # then sets ``draining`` (new requests refused); see xinfd.lifecycle.Lifecycle.drain.
    withdrawn: bool = False
    draining: bool = False
    front_end_url: str = ""
    # Model venvs (xinfd.venvs); None when the daemon was built without them (unit tests of other routes).
    venvs: VenvProvider | None = None
    # Values the last SIGHUP read that wait for a restart: setting -> (new value, where it came from).
    pending: dict[str, tuple[Any, str]] = field(default_factory=dict)
    # Front-end requests being served (xinfd.api.middleware.drain_middleware); SIGTERM drains until it is 0.
    in_flight: int = 0
    # Inference requests admitted by the front end and not finished (xinfd.api.openai): bounded by the sum of
    # the models' capacity before any body is read.
    proxying: int = 0
    # The fork servers replicas fork from (xinfd.preloading.PreloadingSpawner.servers), for `xinfctl status`.
    fork_servers: Callable[[], list[dict[str, object]]] = field(default=lambda: [])


STATE = web.AppKey("xinfd_state", DaemonState)
