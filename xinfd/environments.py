"""The interpreter replicas run with: the seam between the model manager and model virtual environments."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from xinfd.models import RunningModel

@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaEnvironment:
    """The interpreter (and extra variables) a model's replicas run with: a model venv or the daemon's."""

    python: str
    env: Mapping[str, str] = field(default_factory=dict)
    venv_path: str | None = None


Publish = Callable[[dict[str, Any]], Awaitable[None]]


class EnvironmentProvider(Protocol):
    """Prepares the environment of a model before its replicas start (``xinfd.venvs`` builds model venvs)."""

    async def prepare(self, model: RunningModel, publish: Publish) -> ReplicaEnvironment:
        """Build or reuse the environment; progress goes through ``publish``. Cancellable."""
        ...

    def release(self, model: RunningModel) -> None:
        """The model's replicas are gone: its environment is no longer in use by it."""
        ...


class SystemEnvironment:
    """Replicas run with the daemon's own interpreter (virtual environments disabled)."""

    async def prepare(self, model: RunningModel, publish: Publish) -> ReplicaEnvironment:
        return ReplicaEnvironment(python=sys.executable)

    def release(self, model: RunningModel) -> None:
        return None
