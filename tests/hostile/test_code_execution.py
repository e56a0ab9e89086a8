"""Anyone allowed on the control socket tries to run code as the daemon's user through launch options:
direct references and paths in ``-vp``, loader and interpreter variables in ``--env``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.conftest import Daemon

LOADER_VARIABLES = ["PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONWARNINGS", "LD_PRELOAD",
                    "LD_LIBRARY_PATH", "PATH", "HOME", "BASH_ENV"]
REFERENCES = ["evil @ file:///tmp/evil", "evil @ https://evil.example/evil-1.0.tar.gz",
              "evil @ git+https://evil.example/evil", "./evil", "/tmp/evil-1.0-py3-none-any.whl", "evil.tar.gz"]


def test_loader_variables_are_refused_naming_the_setting(daemon: Daemon) -> None:
    for name in LOADER_VARIABLES:
        result = daemon.xinfctl("launch", "-n", "echo", "--env", name, "/tmp/evil", check=False, timeout=30)
        assert result.returncode == 2, (name, result.stderr)
        assert f"--env {name}" in result.stderr and "allow_loader_env" in result.stderr
    assert daemon.xinfctl_json("list") == []


def test_direct_references_and_paths_are_refused_naming_the_setting(daemon: Daemon) -> None:
    for entry in REFERENCES:
        result = daemon.xinfctl("launch", "-n", "echo", "--enable-virtual-env", "-vp", entry, check=False, timeout=30)
        assert result.returncode == 2, (entry, result.stderr)
        assert "allow_direct_references" in result.stderr, entry
    assert daemon.xinfctl_json("list") == []


@pytest.mark.parametrize("harmless", ["PYTHONUNBUFFERED", "OMP_NUM_THREADS"])
def test_ordinary_variables_still_pass(daemon: Daemon, harmless: str) -> None:
    daemon.xinfctl("launch", "-n", "echo", "--env", harmless, "1", timeout=120)


def test_the_operator_can_allow_loader_variables(make_daemon: Any) -> None:
    daemon = make_daemon(env={"XINFD_ALLOW_LOADER_ENV": "1"}).start()
    daemon.xinfctl("launch", "-n", "echo", "--env", "LD_LIBRARY_PATH", "/opt/cuda/lib64", timeout=120)
    assert daemon.xinfctl_json("list")[0]["env"] == ["LD_LIBRARY_PATH"]


def test_a_registered_family_cannot_smuggle_a_direct_reference(daemon: Daemon, tmp_path: Path) -> None:
    spec = tmp_path / "evil.json"
    spec.write_text(json.dumps({"name": "evil", "abilities": ["chat"], "engines": ["echo"],
                                "virtualenv": {"packages": ["evil @ file:///tmp/evil"]}}))
    result = daemon.xinfctl("register", "--file", str(spec), check=False)
    assert result.returncode == 2 and "allow_direct_references" in result.stderr
    assert all(f["model_name"] != "evil" for f in daemon.xinfctl_json("families"))
