"""Typed application state shared by the front end and the control API (no module globals)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from xinfd.api.metrics import Metrics
    from xinfd.config import Settings
    from xinfd.models import ModelManager


@dataclass(slots=True)
class DaemonState:
    """What request handlers need: settings, the model manager, metrics, and whether we are draining."""

    settings: Settings
    manager: ModelManager
    metrics: Metrics
    started: float = field(default_factory=time.time)
    draining: bool = False
    front_end_url: str = ""


STATE = web.AppKey("xinfd_state", DaemonState)
