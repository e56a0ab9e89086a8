"""The daemon never imports torch or an engine library: plugins keep heavy imports inside the replica process."""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "torch",
    "transformers",
    "vllm",
    "sglang",
    "mlx",
    "mlx_lm",
    "llama_cpp",
    "sentence_transformers",
    "numpy",
)

PROBE = f"""
import sys
import xinfd.daemon
from xinfd.plugins import make_plugin_manager
from xinfd.gpus import detect_platform
from xinfd.types import ModelSpec

plugins = make_plugin_manager()
platform = detect_platform((), venv_enabled=True)
for name, info in plugins.engines.items():
    model = next((m for m in plugins.models.values() if name in m.engines), None)
    model = model or ModelSpec(name="probe", abilities=info.abilities, engines=(name,))
    plugins.availability(name, model, platform)
    plugins.dependencies(name)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
print(",".join(heavy))
print(len(plugins.engines))
"""


def test_daemon_and_all_plugins_import_no_engine_library() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    heavy, engines = result.stdout.splitlines()
    assert heavy == "", f"the daemon imported {heavy}"
    assert int(engines) >= 3  # echo, vllm, sglang at least: the check covered real plugins
