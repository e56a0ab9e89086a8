"""A launched model's state: its replicas, its router, what it runs with, and its launch's event log.

Placements are not kept here: the slot table owns them (``SlotTable.placements(uid)``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from xinfd.environments import EnvironmentRequest, ReplicaEnvironment
from xinfd.events import TERMINAL_EVENTS, LaunchEvent
from xinfd.replicas import Replica, ReplicaState
from xinfd.router import Router
from xinfd.supervisor.launch_request import LaunchRequest
from xinfd.types import ModelSpec


class RunningModel:
    """A launched model. The manager mutates it; the control API and the front end read it."""

    def __init__(
        self,
        *,
        uid: str,
        spec: ModelSpec,
        engine: str,
        request: LaunchRequest,
        router: Router[Replica] | None = None,
    ) -> None:
        self.uid = uid
        self.spec = spec
        self.engine = engine
        self.request = request
        self.replicas: list[Replica] = []
        self.router: Router[Replica] = router or Router()
        self.created = time.time()
        # The launch's progress as streamed (JSON objects with model_uid and time), kept for late followers.
        self.events: list[dict[str, Any]] = []
        self.launch_task: asyncio.Task[None] | None = None
        self.terminating = False
        self.launch_error: str | None = None
        # A restored model that could not be placed (its GPU is gone): listed FAILED, kept in the desired state.
        self.unplaced = False
        # Folder fetched from the model hub at launch, given to replicas as the model_path option.
        self.weights_path: str | None = None
        self.environment = ReplicaEnvironment(python=sys.executable)
        self._changed = asyncio.Condition()
        self.scale_lock = asyncio.Lock()

    @property
    def state(self) -> str:
        """LAUNCHING until every replica started once; then READY, DEGRADED (some down) or FAILED."""
        if self.terminating:
            return "TERMINATING"
        if self.launch_error is not None:
            return "FAILED"
        if self.launch_task is not None and not self.launch_task.done():
            return "LAUNCHING"
        states = [r.state for r in self.replicas]
        if states and all(s is ReplicaState.READY for s in states):
            return "READY"
        if any(s is ReplicaState.READY for s in states):
            return "DEGRADED"
        return "FAILED" if states and all(s is ReplicaState.FAILED for s in states) else "RECOVERING"

    def environment_request(self) -> EnvironmentRequest:
        """What the environment provider needs to know of this model."""
        return EnvironmentRequest(model_uid=self.uid, spec=self.spec, engine=self.engine, options=self.request)

    async def publish(self, event: LaunchEvent) -> None:
        """Record a launch event and wake the followers."""
        self.events.append({"model_uid": self.uid, "time": round(time.time(), 3), **event.to_json()})
        async with self._changed:
            self._changed.notify_all()

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        """Every launch event so far, then new ones, until a terminal event (``ready`` or ``error``)."""
        sent = 0
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.events) > sent)  # noqa: B023  # awaited here
            while sent < len(self.events):
                event = self.events[sent]
                sent += 1
                yield event
                if event["event"] in TERMINAL_EVENTS:
                    return

    def snapshot(self) -> dict[str, Any]:
        """What ``xinfctl list`` and ``GET /v1/models/{uid}`` show."""
        return {
            "model_uid": self.uid,
            "model_name": self.spec.name,
            "model_engine": self.engine,
            "abilities": list(self.spec.abilities),
            "state": self.state,
            "created": round(self.created, 3),
            "replica": self.request.replica,
            "options": dict(self.request.options),
            "env": sorted(self.request.env),
            "n_gpu": self.request.n_gpu,
            "gpu_idx": list(self.request.gpu_idx) if self.request.gpu_idx is not None else None,
            "error": self.launch_error,
            "replicas": [r.snapshot() for r in self.replicas],
        }
