"""The spec's scenario end to end: on one daemon with model venvs on, a model whose venv pins
``transformers==4.37.2`` (GOT-OCR2's pin) and a model on the daemon's own transformers 5.x, launched at the same
time, both answering chat through the openai SDK, each replica importing its own transformers.

transformers 4.37.2 brings tokenizers 0.15, which cannot read a ``tokenizer.json`` written by the daemon's
tokenizers, so the old model's folder is written by the old libraries themselves, in a venv of their own
(kept under ``$XINFD_TEST_CACHE``, default ``~/.cache/xinfd-tests``, with the uv cache that the daemon's
build reuses: a second run downloads nothing). Needs pip's index to offer transformers 4.37.2 (PyPI here).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

import openai

from tests.integration.conftest import Daemon

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

OLD = "4.37.2"
REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "unit" / "engines" / "tiny_models.py"
CACHE = Path(os.environ.get("XINFD_TEST_CACHE") or Path.home() / ".cache" / "xinfd-tests")
BUILD = f"import runpy, sys; runpy.run_path({str(TINY)!r})['build_tiny_llama'](__import__('pathlib').Path(sys.argv[1]))"


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run(argv, capture_output=True, text=True, check=True, env=env, timeout=900, **kwargs)


def old_model_folder() -> Path:
    """A tiny random Llama written by transformers 4.37.2 / tokenizers 0.15 in their own venv (built once)."""
    folder = CACHE / f"tiny-llama-transformers-{OLD}"
    if (folder / "config.json").is_file():
        return folder
    venv = CACHE / f"venv-transformers-{OLD}"
    if not (venv / "bin" / "python").exists():
        # Built beside and renamed into place, so an interrupted build is never taken for a finished one.
        building = venv.with_name(venv.name + ".partial")
        shutil.rmtree(building, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(building)])
        # pip with this machine's config: torch 2.13.0 (the CPU build on local disk; any other version is a
        # multi-GB CUDA download), transformers 4.37.2 from the index.
        _run([str(building / "bin" / "python"), "-m", "pip", "install", "-q", f"transformers=={OLD}",
              "torch==2.13.0"])
        building.rename(venv)
    partial = folder.with_name(folder.name + ".partial")
    _run([str(venv / "bin" / "python"), "-c", BUILD, str(partial)])
    partial.rename(folder)
    return folder


def info(daemon: Daemon, uid: str) -> dict[str, Any]:
    """The replica's own ``/info``: what it imported and from which files (read on its Unix socket)."""
    replica = daemon.xinfctl("list", "--json")
    models = json.loads(replica.stdout)
    socket = next(r["socket"] for m in models if m["model_uid"] == uid for r in m["replicas"])
    out = subprocess.run(["curl", "-s", "--unix-socket", socket, "http://replica/info"], capture_output=True,
                         text=True, check=True, timeout=30)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_old_and_new_transformers_side_by_side(make_daemon: Any, tmp_path: Path) -> None:
    import transformers

    old_folder = old_model_folder()
    new_folder = tmp_path / "tiny-new"
    _run([sys.executable, "-c", BUILD, str(new_folder)])
    CACHE.mkdir(parents=True, exist_ok=True)
    daemon = make_daemon("home", {"XINFERENCE_ENABLE_VIRTUAL_ENV": "1",
                                  "UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR") or str(CACHE / "uv")}).start()
    families = {
        "tiny-old": {"extra": {"model_path": str(old_folder)},
                     # unsafe-best-match: the pin is on PyPI while a local extra index has only 5.x.
                     "virtualenv": {"packages": [f"transformers=={OLD}", "#system_torch#", "#system_numpy#"],
                                    "index_strategy": "unsafe-best-match"}},
        "tiny-new": {"extra": {"model_path": str(new_folder)}},
    }
    for name, extra in families.items():
        spec = {"name": name, "abilities": ["chat", "generate"], "engines": ["transformers"],
                "context_length": 512, **extra}
        (tmp_path / f"{name}.json").write_text(json.dumps(spec))
        daemon.xinfctl("register", "--file", str(tmp_path / f"{name}.json"))
    with ThreadPoolExecutor(len(families)) as pool:  # launched at the same time, as the spec's scenario
        list(pool.map(lambda name: daemon.xinfctl("launch", "-n", name, "-e", "transformers", timeout=900),
                      families))

    client = openai.OpenAI(base_url=daemon.endpoint + "/v1", api_key="none", max_retries=0, timeout=120)
    for uid in families:
        reply = client.chat.completions.create(model=uid, messages=[{"role": "user", "content": "hello"}],
                                               max_tokens=8, temperature=0)
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage is not None and 1 <= reply.usage.completion_tokens <= 8
        chunks = list(client.chat.completions.create(
            model=uid, messages=[{"role": "user", "content": "hello"}], max_tokens=6, temperature=0,
            stream=True, stream_options={"include_usage": True}))
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 6

    old, new = info(daemon, "tiny-old"), info(daemon, "tiny-new")
    assert old["libraries"]["transformers"] == OLD
    assert new["libraries"]["transformers"] == transformers.__version__
    assert new["libraries"]["transformers"].startswith("5.")
    # Each module came from its own environment: the old one from the model's venv, not the daemon's.
    assert "/virtualenv/" in old["module_files"]["transformers"]
    assert not new["module_files"]["transformers"].startswith(str(daemon.home))
    assert old["module_files"]["transformers"] != new["module_files"]["transformers"]

    listed = daemon.xinfctl("list").stdout
    assert f"transformers={OLD}" in listed and f"transformers={transformers.__version__}" in listed
    with urllib.request.urlopen(f"{daemon.endpoint}/v1/models", timeout=30) as response:
        cards = {c["id"]: c for c in json.loads(response.read())["data"]}
    assert cards["tiny-old"]["libraries"]["tiny-old-r0"]["transformers"] == OLD
    assert cards["tiny-new"]["libraries"]["tiny-new-r0"]["transformers"] == transformers.__version__
