"""The launch plan: which model, served by which engine, with each replica placed, decided before any spawn.

Everything here is pure (it reads the plugins, the host facts and the slot table, and changes nothing), so a
request that cannot be honoured is refused with its reason before the manager records or starts anything,
and the rules are unit-tested without processes.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass

from xinfd.errors import EngineUnavailableError, ModelExistsError, UnknownModelError
from xinfd.gpus import Placement, SlotTable
from xinfd.plugins import Plugins
from xinfd.supervisor.launch_request import LaunchRequest
from xinfd.supervisor.variant import check_variant
from xinfd.types import ModelSpec, Platform


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchPlan:
    """A launch the manager can carry out: the model, its engine, and one placement per replica."""

    uid: str
    spec: ModelSpec
    engine: str
    request: LaunchRequest
    placements: tuple[Placement, ...]


EngineChoice = Callable[[ModelSpec, str | None], str]


def plan_launch(
    request: LaunchRequest,
    *,
    models: Mapping[str, ModelSpec],
    running: Container[str],
    choose_engine: EngineChoice,
    slots: SlotTable,
) -> LaunchPlan:
    """The plan for ``request``, or the error (unknown model, uid taken, weights the family does not have, no
    engine, impossible placement)."""
    spec = models.get(request.model_name)
    if spec is None:
        known = ", ".join(sorted(models)) or "none"
        raise UnknownModelError(f"unknown model {request.model_name!r} (known: {known})", param="model_name")
    uid = request.model_uid or request.model_name
    if uid in running:
        raise ModelExistsError(f"model uid {uid!r} is already launched; terminate it or pick another uid")
    check_variant(spec, request.variant, model_path=request.options.get("model_path") is not None)
    engine = choose_engine(spec, request.model_engine)
    placements = slots.plan(range(request.replica), n_gpu=request.n_gpu, gpu_idx=request.gpu_idx)
    return LaunchPlan(uid=uid, spec=spec, engine=engine, request=request, placements=tuple(placements))


def plan_scale_up(request: LaunchRequest, first: int, count: int, slots: SlotTable) -> list[Placement]:
    """Placements for ``count`` new replicas numbered from ``first``, on the launch's GPU terms."""
    return slots.plan(range(first, first + count), n_gpu=request.n_gpu, gpu_idx=request.gpu_idx)


def choose_engine(
    plugins: Plugins,
    platform: Platform,
    spec: ModelSpec,
    wanted: str | None,
    installed: Callable[[str | None], bool] | None = None,
) -> str:
    """The requested engine if it can serve the model here, else the first available one of the model.

    An engine whose packages are already importable starts now; one that must be installed first
    (llama-cpp-python compiles for minutes) is chosen only when no ready engine can serve the model, so
    "llama.cpp, or transformers if llama.cpp is not installed" holds. The model's own order breaks ties.
    """
    if wanted is not None:
        plugins.engine(wanted)
        if wanted not in spec.engines:
            raise EngineUnavailableError(
                f"model {spec.name!r} does not support engine {wanted!r} (supported: {', '.join(spec.engines)})"
            )
        avail = plugins.availability(wanted, spec, platform)
        if not avail.available:
            raise EngineUnavailableError(f"engine {wanted!r} is unavailable: {avail.reason}")
        return wanted
    reasons = []
    available: list[str] = []
    for engine in spec.engines:
        if engine not in plugins.engines:
            reasons.append(f"{engine}: not installed")
            continue
        avail = plugins.availability(engine, spec, platform)
        if avail.available:
            available.append(engine)
        else:
            reasons.append(f"{engine}: {avail.reason}")
    if not available:
        raise EngineUnavailableError(f"no engine can serve {spec.name!r} here ({'; '.join(reasons)})")
    probe = installed or module_findable
    ready = [e for e in available if probe(plugins.engines[e].probe_module)]
    return (ready or available)[0]


def module_findable(module: str | None) -> bool:
    """Whether an engine's probe module is importable in the daemon's environment (found, not imported)."""
    if module is None:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
