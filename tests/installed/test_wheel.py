"""What users install: the wheels in a fresh venv (no ``-e``, nothing of the checkout on ``sys.path``, run from
outside the checkout) list every builtin family, launch SmolLM2 and answer through the openai SDK.

Measured on 2 cores: about 20 s with the venv cached (see ``wheelhouse`` for building it): daemon start,
SmolLM2's first load with its GGUF conversion, the answer."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from openai import OpenAI

from tests.installed.wheelhouse import FAMILIES, REPO, InstalledDaemon, outside_env

pytestmark = [pytest.mark.installed, pytest.mark.slow]
UI_DIR = REPO / "xinfd" / "data" / "ui"  # the web console (xinfd.api.ui)


def _run(venv: Path, cwd: Path, code: str) -> str:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], cwd=cwd, env=outside_env({}, venv),
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_import_comes_from_the_venv_with_its_data(venv: Path, tmp_path: Path) -> None:
    code = (
        "import json, xinfd, xinfd_engines, xinfd_echo, xinfd.registry as r, importlib.metadata as m; "
        "print(json.dumps([xinfd.__file__, xinfd_engines.__file__, xinfd_echo.__file__, str(r.BUILTIN_DIR), "
        "sorted(e.name for e in m.entry_points(group='xinfd'))]))"
    )
    *files, builtin, entry_points = json.loads(_run(venv, tmp_path, code))
    for path in (*files, builtin):
        assert Path(path).resolve().is_relative_to(venv.resolve()), path
        assert not Path(path).resolve().is_relative_to(REPO), path
    assert {p.name for p in Path(builtin).glob("*.json")} == {p.name for p in FAMILIES.glob("*.json")}
    assert set(entry_points) >= {"echo", "transformers", "llama_cpp", "sentence_transformers", "vllm", "sglang"}
    # The web console's files are package data too, read the way the daemon serves them.
    ui_code = ("import json, hashlib, xinfd.api.ui as ui; "
               "print(json.dumps({n: hashlib.sha256(ui.ui_file(n)).hexdigest() for n in ui.UI_FILES}))")
    served = json.loads(_run(venv, tmp_path, ui_code))
    assert served == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in UI_DIR.iterdir()}, served
    # The reference config is installed for packagers and is what this installed daemon documents.
    reference = venv / "share" / "xinfd" / "xinfd.toml"
    printed = subprocess.run(
        [str(venv / "bin" / "xinfd"), "--print-reference"], cwd=tmp_path, env=outside_env({}, venv),
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert reference.read_text() == (REPO / "etc" / "xinfd.toml").read_text() == printed


def test_installed_daemon_lists_every_family_launches_smollm2_and_answers(venv: Path, tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    env = outside_env(
        {
            "XINFERENCE_HOME": str(home),
            "XINFERENCE_ENABLE_VIRTUAL_ENV": "0",
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
        },
        venv,
    )
    daemon = InstalledDaemon(venv=venv, home=home, cwd=cwd, env=env)
    try:
        daemon.start("--port", "0")
        families = {f["model_name"] for f in daemon.xinfctl_json("families")}
        builtin = {json.loads(p.read_text())["name"] for p in FAMILIES.glob("*.json")}
        assert builtin <= families and "echo" in families, families
        daemon.xinfctl("launch", "-n", "smollm2-135m-instruct")
        with OpenAI(base_url=f"{daemon.endpoint()}/v1", api_key="unused", timeout=120) as client:
            reply = client.chat.completions.create(
                model="smollm2-135m-instruct",
                messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
                temperature=0,
                max_tokens=16,
            )
        assert "Paris" in (reply.choices[0].message.content or ""), reply
        status, _ = daemon.stop()
        assert status == 0, daemon.log()
    finally:
        daemon.kill()
