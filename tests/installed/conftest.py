"""The installed-wheel lane runs only when selected (``pytest -m installed``, as ``.ci/run`` does after the main
test command, or ``XINFD_TEST_INSTALLED=1``): it builds wheels and a venv, which the editable lane does not need."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.installed.wheelhouse import Installed, installed_venv


@pytest.fixture(scope="session")
def installed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    selected = "installed" in (request.config.getoption("markexpr") or "")
    if not selected and os.environ.get("XINFD_TEST_INSTALLED") != "1":
        pytest.skip("the installed-wheel lane runs alone: pytest -m installed (.ci/run runs it)")
    return installed_venv(tmp_path_factory.mktemp("wheels"))


@pytest.fixture(scope="session")
def venv(installed: Installed) -> Path:
    return installed.venv
