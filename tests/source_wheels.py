"""llama-cpp-python for the test run, built the way a daemon builds it, once per machine.

PyPI has no llama-cpp-python wheel. The first test that needs it asks xinfd's own ``VenvProvider`` for the
llama.cpp venv of the default model: that resolves the engine's dependencies, builds llama-cpp-python from
source with the engine's portable settings into the wheel cache (minutes, once), installs it and proves that
``llama_cpp`` imports. The cached wheel is then installed into the test environment itself, so in-process
tests and daemons started without venvs can load it too.

The wheel cache outlives the run (``XINFD_TEST_WHEEL_CACHE``, default ``~/.cache/xinfd-tests/wheels``), so a
developer's machine builds once ever and a CI run builds once per fresh machine. Runnable by hand to prebuild:
``python -m tests.source_wheels``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from xinfd.events import LaunchEvent
from xinfd.plugins import make_plugin_manager
from xinfd.registry import ModelRegistry
from xinfd.venvs.cache import read_metadata
from xinfd.venvs.provider import VenvProvider

DEFAULT_MODEL = "smollm2-135m-instruct"


def shared_wheel_cache() -> Path:
    """The wheel cache shared by every test run on this machine."""
    configured = os.environ.get("XINFD_TEST_WHEEL_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "xinfd-tests" / "wheels"


async def build_llama_cpp_venv(home: Path, wheel_cache: Path, *, skip_installed: bool = True) -> dict[str, Any]:
    """Build the llama.cpp venv of the default model under ``home``; returns its metadata (what was built)."""
    plugins = make_plugin_manager()
    provider = VenvProvider(home=home, plugins=plugins, enabled=True, skip_installed=skip_installed,
                            wheel_cache=wheel_cache, build_timeout=3600)

    async def show(event: LaunchEvent) -> None:
        print(event.to_json().get("message", ""), file=sys.stderr, flush=True)

    model = ModelRegistry.for_home(home).builtin()[DEFAULT_MODEL]
    venv = await provider.create(model, "llama.cpp", publish=show)
    return read_metadata(venv) or {}


def ensure_llama_cpp() -> str | None:
    """Make ``llama_cpp`` importable here; returns None, or why it could not be done (for a skip message)."""
    if importlib.util.find_spec("llama_cpp") is not None:
        return None
    cache = shared_wheel_cache()
    with tempfile.TemporaryDirectory(prefix="xinfd-llama-build-") as home:
        meta = asyncio.run(build_llama_cpp_venv(Path(home), cache))
    wheel = (meta.get("built_from_source") or {}).get("llama-cpp-python")
    if not wheel:
        return f"the llama.cpp venv did not build llama-cpp-python from source (metadata: {meta})"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return f"pip install {wheel} failed: {done.stderr.strip().splitlines()[-1:]}"
    importlib.invalidate_caches()
    return None if importlib.util.find_spec("llama_cpp") is not None else "llama_cpp still does not import"


if __name__ == "__main__":
    problem = ensure_llama_cpp()
    print(problem or "llama_cpp is importable", file=sys.stderr)
    sys.exit(1 if problem else 0)
