"""The management operations, once: what the control socket's routes and the HTTP management routes both call.

The control API (``xinfd.api.control*``, on the Unix socket and mounted at ``/control`` on the front end) and
Xinference's REST API (``xinfd.api.xinference``) differ only in the shapes of their bodies and answers; each
operation that changes or reads the daemon's models, registrations and venvs is a function here, taking the
``DaemonState``, so the two APIs cannot drift apart in what they do or check.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from xinfd.api.state import DaemonState
from xinfd.errors import InvalidRequestError, UnknownModelError
from xinfd.registry import ModelRegistry
from xinfd.supervisor import LaunchRequest, RunningModel
from xinfd.types import ModelSpec
from xinfd.venvs.provider import VenvProvider

log = logging.getLogger(__name__)


async def start_launch(state: DaemonState, request: LaunchRequest, *, via: str) -> RunningModel:
    """Check and start a launch; returns at once with the model (its launch runs in the manager).

    A ``--python`` that is not on this machine is a 400 before anything starts (the venv provider's check).
    """
    if state.venvs is not None:
        await state.venvs.check_launch(request)
    model = state.manager.start_launch(request)
    log.info("launch of %s requested %s", model.uid, via)
    return model


async def terminate(state: DaemonState, uid: str, *, via: str) -> dict[str, Any]:
    """Stop every replica of ``uid`` (cancelling its launch if still running); the model's last snapshot."""
    log.info("terminate of %s requested %s", uid, via)
    return await state.manager.terminate(uid)


async def cancel_launch(state: DaemonState, uid: str, *, via: str) -> dict[str, Any]:
    """Cancel a launch in progress (the model is then gone); a model already launched is refused (400)."""
    model = state.manager.get(uid)
    if model.state != "LAUNCHING":
        raise InvalidRequestError(
            f"model {uid!r} is {model.state}, not launching: nothing to cancel (terminate it instead)",
            param="model_uid",
        )
    return await terminate(state, uid, via=via)


def registry(state: DaemonState) -> ModelRegistry:
    return ModelRegistry.for_home(state.settings.home)


def registrations(state: DaemonState) -> dict[str, ModelSpec]:
    """The user-registered families (the files under the home directory)."""
    return registry(state).registrations()


def register(state: DaemonState, data: Any) -> ModelSpec:
    """Validate and store a user family; launchable at once (the daemon's family table is updated too)."""
    return registry(state).register(data, state.manager.plugins.models)


def unregister(state: DaemonState, name: str) -> None:
    registry(state).unregister(name, state.manager.plugins.models)


def family_sources(state: DaemonState) -> dict[str, str]:
    """Each launchable family's origin: ``user`` (registered), else ``builtin`` (shipped data or a plugin)."""
    mine = set(registrations(state))
    return {name: "user" if name in mine else "builtin" for name in state.manager.families()}


def family(state: DaemonState, name: str, param: str = "model_name") -> ModelSpec:
    """A launchable family by name, or 404 naming ``param``."""
    spec = state.manager.families().get(name)
    if spec is None:
        raise UnknownModelError(f"unknown model family {name!r}", param=param)
    return spec


def venv_provider(state: DaemonState) -> VenvProvider:
    if state.venvs is None:
        raise InvalidRequestError("model venvs are not available in this daemon")
    return state.venvs


async def list_venvs(state: DaemonState, model: str | None = None, *, verify: bool = False) -> list[dict[str, Any]]:
    """Every model venv (or one model's): model, engine, python, size, packages, in use by; with ``verify``,
    each row's ``damaged`` files (every file is hashed against its ``RECORD``)."""
    provider = venv_provider(state)
    rows: list[dict[str, Any]] = await asyncio.to_thread(lambda: provider.entries(model, verify=verify))
    return rows


async def remove_venvs(
    state: DaemonState, model: str, engine: str | None = None, python: str | None = None
) -> list[str]:
    """Remove a model's venvs (filtered by engine and Python); 409 for one a replica uses."""
    removed: list[str] = await venv_provider(state).remove(model, engine, python)
    return removed


def parse_json_object(body: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequestError(f"{what} must be a JSON object")
    return body
