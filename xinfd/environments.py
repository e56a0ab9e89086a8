"""The interpreter replicas run with: the seam between the model supervisor and model virtual environments.

The supervisor asks an ``EnvironmentProvider`` for each launched model's environment; ``xinfd.venvs`` provides
one that builds model venvs. The provider sees only an ``EnvironmentRequest`` (plain data), never the
supervisor's objects, so the venv layer does not depend on the supervisor.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from xinfd.events import Publish
from xinfd.types import ModelSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaEnvironment:
    """The interpreter (and extra variables) a model's replicas run with: a model venv or the daemon's."""

    python: str
    env: Mapping[str, str] = field(default_factory=dict)
    venv_path: str | None = None


class EnvironmentOptions(Protocol):
    """What a launch asks of its environment (``LaunchRequest`` has these fields)."""

    @property
    def python(self) -> str | None:
        """``--python``: a version or an absolute path; None for the daemon's interpreter."""
        ...

    @property
    def enable_virtual_env(self) -> bool | None:
        """``--enable-virtual-env`` / ``--disable-virtual-env``; None: the daemon's setting."""
        ...

    @property
    def virtual_env_packages(self) -> tuple[str, ...]:
        """``--virtual-env-package``: added to the model's venv packages."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvironmentRequest:
    """The environment one launched model needs: which model, served by which engine, with which options."""

    model_uid: str
    spec: ModelSpec
    engine: str
    options: EnvironmentOptions


class EnvironmentProvider(Protocol):
    """Prepares the environment of a model before its replicas start (``xinfd.venvs`` builds model venvs)."""

    async def prepare(self, request: EnvironmentRequest, publish: Publish) -> ReplicaEnvironment:
        """Build or reuse the environment; progress goes through ``publish``. Cancellable."""
        ...

    def release(self, model_uid: str) -> None:
        """The model's replicas are gone: its environment is no longer in use by it."""
        ...


class SystemEnvironment:
    """Replicas run with the daemon's own interpreter (virtual environments disabled)."""

    async def prepare(self, request: EnvironmentRequest, publish: Publish) -> ReplicaEnvironment:
        return ReplicaEnvironment(python=sys.executable)

    def release(self, model_uid: str) -> None:
        return None
