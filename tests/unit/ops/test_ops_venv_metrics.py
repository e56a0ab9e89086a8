"""Venv build metrics: a real uv build and a failed one are counted and timed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.venvs.test_venv_provider import index_url, model, plugins, provider  # noqa: F401  # fixtures
from xinfd.api.metrics import Metrics
from xinfd.plugins import Plugins
from xinfd.venvs.spec import VenvError


async def test_builds_are_counted_by_result(tmp_path: Path, plugins: Plugins, index_url: str) -> None:  # noqa: F811
    metrics = Metrics()
    venvs = provider(tmp_path, plugins)
    venvs.on_build = metrics.venv_build
    await venvs.create(model(index_url, "xinfdtestpkg==2.0"), "pkgver")
    with pytest.raises(VenvError):
        await venvs.create(model(index_url, "xinfdtestpkg==9.9", name="other"), "pkgver")
    get = metrics.registry.get_sample_value
    assert get("xinfd_venv_builds_total", {"result": "ok"}) == 1
    assert get("xinfd_venv_builds_total", {"result": "failed"}) == 1
    assert get("xinfd_venv_build_duration_seconds_count") == 2
    assert (get("xinfd_venv_build_duration_seconds_sum") or 0) > 0
