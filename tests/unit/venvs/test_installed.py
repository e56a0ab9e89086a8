"""Reading what a venv's interpreter sees from its directories (``xinfd.venvs.installed``), checked against the
interpreter's own answer in a real uv venv."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from packaging.version import Version

from xinfd.venvs import installed
from xinfd.venvs.builder import _BASE_DISTS, PTH_NAME, Uv, _probe_env, daemon_site_dirs
from xinfd.venvs.cache import site_packages


def _dist(directory: Path, entry: str, **files: str) -> None:
    (directory / entry).mkdir(parents=True)
    for name, text in files.items():
        (directory / entry / name).write_text(text)


def test_first_directory_with_a_name_wins_and_names_are_canonical(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    _dist(first, "Foo_Bar-2.0.dist-info")
    _dist(second, "foo.bar-1.0.dist-info")
    _dist(second, "legacy_pkg-0.3-py3.11.egg-info")
    _dist(second, "not-a-dist")
    assert installed.visible([str(first), str(second), str(tmp_path / "missing")]) == {
        "foo-bar": "2.0", "legacy-pkg": "0.3"}


def test_freeze_lists_pins_and_direct_urls(tmp_path: Path) -> None:
    _dist(tmp_path, "PyYAML-6.0.1.dist-info")
    _dist(tmp_path, "mine-0.1.dist-info", **{"direct_url.json": json.dumps({"url": "file:///src/mine"})})
    assert installed.freeze(tmp_path) == ["mine @ file:///src/mine", "pyyaml==6.0.1"]


def test_prediction_matches_what_the_new_venvs_interpreter_sees(tmp_path: Path) -> None:
    """The build skips what the base has from ``predicted_path``; the venv's own interpreter must agree on
    every name and version (a wrong prediction would publish a venv missing a package)."""
    venv = tmp_path / "venv"
    uv = Uv()
    subprocess.run([uv.binary, "venv", "--quiet", "--system-site-packages", "--python", sys.executable,
                    str(venv)], check=True, env=uv.env())
    sp = site_packages(venv)
    extra = daemon_site_dirs()
    if extra:
        (sp / PTH_NAME).write_text("".join(f"import site; site.addsitedir({d!r})\n" for d in extra))
    env = dict(_probe_env())
    told = json.loads(subprocess.run([str(venv / "bin" / "python"), "-c", _BASE_DISTS], check=True,
                                     capture_output=True, text=True, env=env).stdout)
    predicted = installed.visible(installed.predicted_path(sp, extra, env=env))
    assert set(predicted) == set(told)
    assert {n: Version(v) for n, v in predicted.items()} == {n: Version(v) for n, v in told.items()}
