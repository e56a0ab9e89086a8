"""Which library versions this replica really imported, for ``/health`` and ``/info``.

A model venv may pin an old transformers next to a daemon on the newest one; what matters to an operator is what
the replica process loaded, not what a requirements line asked for. Versions come from ``importlib.metadata`` of
the distribution that provides each imported top-level module (``sys.modules``), so a library the engine never
imported is not reported, and one shadowed by another path reports the distribution that file came from.
Standard library only.
"""

from __future__ import annotations

import functools
import importlib.metadata
import sys
from typing import Any

# Top-level modules worth reporting: the engines' libraries and what decides their behaviour. Others imported
# by the worker itself (aiohttp, pluggy) are the daemon's and say nothing about the model's venv.
REPORTED = (
    "transformers",
    "torch",
    "tokenizers",
    "accelerate",
    "safetensors",
    "sentence_transformers",
    "llama_cpp",
    "mlx",
    "mlx_lm",
    "numpy",
    "diffusers",
    "vllm",
    "sglang",
)


@functools.cache
def _providers() -> dict[str, list[str]]:
    """Top-level module -> distributions, read once: scanning every dist-info costs tens of milliseconds and the
    installed set does not change under a running replica."""
    try:
        return dict(importlib.metadata.packages_distributions())
    except Exception:  # a broken dist-info elsewhere must not hide the others
        return {}


@functools.cache
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def imported_libraries(modules: tuple[str, ...] = REPORTED) -> dict[str, str]:
    """``{distribution: version}`` for each of ``modules`` that this process has imported."""
    found: dict[str, str] = {}
    for module in modules:
        if module not in sys.modules:
            continue
        dist = (_providers().get(module) or [module])[0]
        version = _version(dist) or getattr(sys.modules[module], "__version__", None)
        if isinstance(version, str):
            found[dist] = version
    return found


def module_files(modules: tuple[str, ...] = REPORTED) -> dict[str, str]:
    """Where each imported module of ``modules`` was loaded from (which venv's site-packages)."""
    files: dict[str, str] = {}
    for module in modules:
        loaded: Any = sys.modules.get(module)
        path = getattr(loaded, "__file__", None)
        if isinstance(path, str):
            files[module] = path
    return files
