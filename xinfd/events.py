"""Launch progress events: what a model launch, a venv build and a weights download report as they go.

The control API streams them as NDJSON lines (``POST /v1/models``, ``POST /v1/venvs``) and ``xinfctl`` shows
each line's ``message`` with the time since the start, stopping at the terminal event (``ready`` or ``error``).
Every event is a frozen dataclass; its wire form is ``to_json()``: ``{"event": <kind>, <fields>...}``, the
shape xinfctl and scripts read. Standard library only: the supervisor, the venv layer and the downloader
publish the same types, and none of them needs to know the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

TERMINAL_EVENTS = frozenset({"ready", "error"})


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchEvent:
    """One progress line. ``kind`` is the wire name (``"event"``), ``message`` the human-readable text."""

    kind: ClassVar[str] = "progress"
    message: str

    def to_json(self) -> dict[str, Any]:
        """The NDJSON object: the kind first, then the fields (an optional field left at None is omitted)."""
        body: dict[str, Any] = {"event": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None or f.default is not None:
                body[f.name] = dict(value) if isinstance(value, Mapping) else value
        return body


Publish = Callable[[LaunchEvent], Awaitable[None]]


async def discard(event: LaunchEvent) -> None:
    """A ``Publish`` for callers that do not show progress."""
    return None


# -- a model launch ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Launching(LaunchEvent):
    kind: ClassVar[str] = "launching"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaStarting(LaunchEvent):
    kind: ClassVar[str] = "replica_starting"
    replica: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaReady(LaunchEvent):
    kind: ClassVar[str] = "replica_ready"
    replica: int
    pid: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready(LaunchEvent):
    """Terminal: the launch (``model``: its snapshot) or the venv build (``venv``: its row) succeeded."""

    kind: ClassVar[str] = "ready"
    model: Mapping[str, Any] | None = None
    venv: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Failed(LaunchEvent):
    """Terminal: the operation failed; ``code`` is the stable error code (``XinfdError.code``)."""

    kind: ClassVar[str] = "error"
    code: str
    # The error's HTTP status (``XinfdError.status``): a 4xx other than 409 is a refusal of the request's input,
    # for which xinfctl exits 2 as for a refusal up front.
    status: int | None = None


# -- a venv build ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class VenvProgress(LaunchEvent):
    """A step of a venv build or reuse (uv output lines included)."""

    kind: ClassVar[str] = "venv"


# -- a weights download ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DownloadCached(LaunchEvent):
    kind: ClassVar[str] = "download_cached"


@dataclass(frozen=True, slots=True, kw_only=True)
class DownloadSkipped(LaunchEvent):
    kind: ClassVar[str] = "download_skipped"


@dataclass(frozen=True, slots=True, kw_only=True)
class Downloading(LaunchEvent):
    kind: ClassVar[str] = "downloading"
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DownloadProgress(LaunchEvent):
    kind: ClassVar[str] = "download_progress"
    bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DownloadRetry(LaunchEvent):
    kind: ClassVar[str] = "download_retry"
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Downloaded(LaunchEvent):
    kind: ClassVar[str] = "downloaded"
