"""This machine's pip config through a real daemon: PyPI plus extra local indexes, where the extra index has a
newer ``six`` than the one asked for. pip finds 1.16.0 on PyPI; the venv build must too (pip's semantics for
``inherit_pip_config``). Skipped where pip's config has no extra index or PyPI cannot be reached."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def _machine_has_extra_indexes() -> bool:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    if "extra-index-url" not in out.stdout:
        return False
    try:
        urllib.request.urlopen("https://pypi.org/simple/six/", timeout=5).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _machine_has_extra_indexes(), reason="needs pip config with extra indexes and PyPI")
def test_echo_venv_with_an_older_six_builds_on_this_machine_s_pip_config(make_daemon: Any) -> None:
    daemon = make_daemon("home", {}).start()
    launch = daemon.xinfctl("launch", "-n", "echo", "-e", "ECHO", "--enable-virtual-env", "-vp", "six==1.16.0",
                            timeout=600)
    assert launch.stdout.strip() == "echo", launch.stderr
    venv = next(v for v in daemon.xinfctl_json("venv", "list") if v["model_name"] == "echo")
    sp = next(Path(venv["path"]).glob("lib/python*/site-packages"))
    assert (sp / "six-1.16.0.dist-info").is_dir()
    offered = daemon.xinfctl_json("engines", "-n", "echo")
    assert [row["name"] for row in offered] and all("available" in row for row in offered)
    daemon.xinfctl("terminate", "echo")
