"""What the daemon imports: never torch or an engine library (plugins keep heavy imports inside the replica
process), and, at an idle start, none of the modules only a launch, a venv build or a misspelled setting needs
(they are imported in the functions that use them, which keeps the idle daemon's memory down)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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

# Imported lazily, each by the code that needs it: packaging (requirements and markers: a launch or a venv
# build), tomllib (a config file), difflib (the closest name to a misspelled setting).
LAZY = ("packaging", "tomllib", "difflib")
# Never imported by the daemon: /metrics is xinfd.api.exposition's (prometheus-client would bring its HTTP
# servers and exporters, about 1 MiB of an idle daemon).
NEVER = ("prometheus_client", "http.server", "socketserver", "wsgiref")

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

# The real start path: ``serve()`` until it is ready (both sites listening, plugins loaded, the registry
# installed, the GPU inventory read), then the modules it holds, then SIGTERM to stop it as an operator would.
START_PROBE = """
import asyncio, os, signal, sys
from pathlib import Path

import xinfd.config
from xinfd.config import load_settings
from xinfd.daemon import serve

xinfd.config.DEFAULT_CONFIG_PATH = Path(os.environ["XINFERENCE_HOME"]) / "absent.toml"  # no /etc/xinfd here


async def main() -> None:
    ready = asyncio.Event()
    settings = load_settings(cli={"host": "127.0.0.1", "port": 0})
    task = asyncio.create_task(serve(settings, ready=ready))
    await asyncio.wait_for(ready.wait(), 60)
    print(",".join(sorted(sys.modules)))
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(task, 60)


asyncio.run(main())
"""

# What a hookimpl module of the builtin engines (and the example plugin) may import when the plugin manager
# loads it: the standard library, xinfd, and its own package.
ALLOWED_AT_PLUGIN_LOAD = frozenset(sys.stdlib_module_names) | {"xinfd", "xinfd_engines", "xinfd_echo"}

PLUGIN_LOAD_PROBE = """
import sys
import xinfd.daemon
from xinfd.plugins import make_plugin_manager

before = set(sys.modules)
plugins = make_plugin_manager()
print(",".join(sorted(set(sys.modules) - before)))
print(",".join(sorted(plugins.engines)))
"""


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XINFERENCE_", "XINFD_"))}
    return {**env, "XINFERENCE_HOME": str(home), "XINFERENCE_ENABLE_VIRTUAL_ENV": "0", "HF_HUB_OFFLINE": "1"}


def run_probe(code: str, env: dict[str, str] | None = None) -> list[str]:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_daemon_and_all_plugins_import_no_engine_library() -> None:
    heavy, engines = run_probe(PROBE)
    assert heavy == "", f"the daemon imported {heavy}"
    assert int(engines) >= 3  # echo, vllm, sglang at least: the check covered real plugins


def test_an_idle_daemon_start_imports_none_of_the_lazy_modules(tmp_path: Path) -> None:
    (line,) = [out for out in run_probe(START_PROBE, clean_env(tmp_path)) if "xinfd.daemon" in out]
    modules = set(line.split(","))
    assert {"aiohttp.web", "xinfd.api.exposition", "xinfd.venvs.spec", "xinfd.venv_markers"} <= modules  # started
    # pynvml only where NVML's library exists: on a CPU-only host the daemon learns that without importing it.
    from xinfd.gpus import nvml_library_missing

    lazy = LAZY + NEVER + (("pynvml",) if nvml_library_missing() is not None else ())
    loaded = sorted(m for m in modules if m in lazy or m.split(".")[0] in lazy)
    assert loaded == [], f"the daemon's start imported {loaded}: import them where they are used"


def test_plugin_load_imports_only_the_standard_library_and_xinfd(tmp_path: Path) -> None:
    added, engines = run_probe(PLUGIN_LOAD_PROBE, clean_env(tmp_path))
    assert {"vllm", "transformers", "llama.cpp", "echo"} <= set(engines.split(","))  # builtins and a plugin
    foreign = sorted(m for m in added.split(",") if m and m.split(".")[0] not in ALLOWED_AT_PLUGIN_LOAD)
    assert foreign == [], f"loading the plugins imported {foreign}: engine libraries belong in the replica"
