"""What the engines served by xinfd's worker host share (transformers, sentence-transformers, llama.cpp, mlx).

They run on the CPU as well as on GPUs, so availability is about the model and, with model venvs off, about
the packages being importable in the daemon's environment (found with ``importlib.util.find_spec``, never
imported). ``LocalEngine`` adds that check to ``xinfd.hookspecs.WorkerEngine``. Standard library and xinfd's
public types only: the daemon imports this module.
"""

from __future__ import annotations

import platform as _platform
from collections.abc import Mapping
from typing import Any

from xinfd.hookspecs import WorkerEngine
from xinfd.types import Availability, ModelSpec, Platform
from xinfd_engines._common import is_importable

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def check_local_availability(
    engine: str, modules: tuple[str, ...], model: ModelSpec, platform: Platform
) -> Availability:
    """Availability of a CPU-capable engine: the model lists it; without venvs its packages are here."""
    if engine not in model.engines:
        supported = ", ".join(model.engines) or "none"
        return Availability(
            available=False,
            reason=f"model {model.name} does not support engine {engine} (supported: {supported})",
        )
    if not platform.venv_enabled:
        missing = [m for m in modules if not is_importable(m)]
        if missing:
            return Availability(
                available=False,
                reason=f"{', '.join(missing)} not installed in the daemon's environment and model virtual "
                "environments are disabled (XINFERENCE_ENABLE_VIRTUAL_ENV=0)",
            )
    where = (
        f"{len(platform.gpus)} GPU(s)"
        if platform.gpus
        else f"CPU ({platform.machine or _platform.machine()})"
    )
    return Availability(available=True, reason=f"ready on {where}")


def bool_option(options: Mapping[str, Any], name: str) -> bool | None:
    """A boolean launch option (``None`` when unset); CLI values arrive as strings such as ``"false"``.

    :raises ValueError: naming the option when the value is not a boolean.
    """
    value = options.get(name)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"launch option {name!r} must be true or false, got {value!r}")


class LocalEngine(WorkerEngine):
    """A worker-hosted engine whose availability is ``check_local_availability`` over ``modules``."""

    # Import names that must be findable when model venvs are off (the daemon's environment serves then).
    modules: tuple[str, ...] = ()

    def availability(self, model: ModelSpec, platform: Platform) -> Availability:
        return check_local_availability(self.name, self.modules, model, platform)
