"""LaunchRequest validation and engine choice (no processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.stub_engines import StubEngine, StubPlugin
from xinfd.errors import EngineUnavailableError, InvalidRequestError, UnknownModelError
from xinfd.plugins import make_plugin_manager
from xinfd.processes import SubprocessSpawner
from xinfd.replica_launch import CONTEXT_ENV, encode_context
from xinfd.supervisor import LaunchRequest, ModelManager
from xinfd.types import Availability, LaunchSpec, ModelSpec, Platform, ReplicaContext


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({"model_name": "a/../b"}, "model_name"),
        ({"model_name": ""}, "model_name"),
        ({"model_name": "m", "replica": 0}, "replica"),
        ({"model_name": "m", "replica": True}, "replica"),
        ({"model_name": "m", "replica": "2"}, "replica"),
        ({"model_name": "m", "model_uid": "../etc"}, "model_uid"),
        ({"model_name": "m", "env": {"CUDA_VISIBLE_DEVICES": "0"}}, "env"),
        ({"model_name": "m", "env": {"1BAD": "x"}}, "env"),
        ({"model_name": "m", "env": {"A": 1}}, "env"),
        ({"model_name": "m", "options": []}, "options"),
        ({"model_name": "m", "surprise": 1}, "surprise"),
        ({"model_name": "m", "cpu_threads": 0}, "cpu_threads"),
        ({"model_name": "m", "cpu_threads": "2"}, "cpu_threads"),
        ({"model_name": "m", "cpu_threads": True}, "cpu_threads"),
    ],
)
def test_launch_request_rejects_bad_fields(body: Any, param: str | None) -> None:
    with pytest.raises(InvalidRequestError) as info:
        LaunchRequest.from_json(body)
    assert info.value.param == param


def test_launch_request_accepts_a_full_body() -> None:
    req = LaunchRequest.from_json(
        {
            "model_name": "echo",
            "model_engine": "echo",
            "replica": 3,
            "model_uid": "e-1",
            "env": {"A": "1"},
            "options": {"delay": "0.1"},
        }
    )
    assert (req.replica, req.model_uid, dict(req.env), dict(req.options)) == (
        3,
        "e-1",
        {"A": "1"},
        {"delay": "0.1"},
    )


def _gpu_only(model: ModelSpec, platform: Platform) -> Availability:
    return Availability(available=bool(platform.gpus), reason="needs a GPU; none found")


def _launch(model: ModelSpec, replica: ReplicaContext) -> LaunchSpec:
    if replica.options.get("bad"):
        raise ValueError("launch option 'bad' is not understood")
    # The context travels as the worker's would, so tests can read what the daemon chose for the replica.
    return LaunchSpec(argv=("true",), env={CONTEXT_ENV: encode_context(replica, model)})


class TwoEngines(StubPlugin):
    """``gpuonly`` (available with a GPU) and ``cpu``, both serving the family ``m``."""

    def __init__(self) -> None:
        super().__init__(
            [
                StubEngine(name="gpuonly", on_availability=_gpu_only, on_launch=_launch),
                StubEngine(name="cpu", on_launch=_launch),
            ],
            [ModelSpec(name="m", abilities=("chat",), engines=("gpuonly", "cpu", "missing"))],
        )


def manager(tmp_path: Path) -> ModelManager:
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[TwoEngines()], env={})
    platform = Platform(system="Linux", machine="x86_64", python_version="3.11.7")
    return ModelManager(
        plugins=plugins,
        platform=platform,
        home=tmp_path,
        spawner=SubprocessSpawner(),
        stop_grace=1,
        launch_timeout=5,
    )


def test_engine_choice_skips_unavailable_engines(tmp_path: Path) -> None:
    mgr = manager(tmp_path)
    spec = mgr.plugins.models["m"]
    assert mgr.choose_engine(spec, None) == "cpu"
    with pytest.raises(
        EngineUnavailableError, match="engine 'gpuonly' is unavailable: needs a GPU; none found"
    ):
        mgr.choose_engine(spec, "gpuonly")


def test_unknown_model_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match=r"unknown model 'x' \(known: m\)"):
        manager(tmp_path).start_launch(LaunchRequest(model_name="x"))


async def test_bad_engine_option_is_refused_before_anything_starts(tmp_path: Path) -> None:
    mgr = manager(tmp_path)
    with pytest.raises(InvalidRequestError, match="launch option 'bad'") as info:
        mgr.start_launch(LaunchRequest(model_name="m", options={"bad": True}))
    assert info.value.status == 400
    assert mgr.models == {}


def _installable(model: ModelSpec, platform: Platform) -> Availability:
    return Availability(available=True, reason="installable")


def InstalledAndNot() -> StubPlugin:
    """Two available engines: the first listed needs installing, the second's packages are importable."""
    return StubPlugin(
        [
            StubEngine(name="needs-build", probe_module="no_such_module_xinfd_test", on_availability=_installable),
            StubEngine(name="ready", probe_module="json", on_availability=_installable),
        ],
        [
            ModelSpec(name="pref", abilities=("chat",), engines=("needs-build", "ready")),
            ModelSpec(name="only-build", abilities=("chat",), engines=("needs-build",)),
        ],
    )


def test_engine_choice_prefers_an_installed_engine(tmp_path: Path) -> None:
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[InstalledAndNot()], env={})
    platform = Platform(system="Linux", machine="x86_64", python_version="3.11.7")
    mgr = ModelManager(
        plugins=plugins,
        platform=platform,
        home=tmp_path,
        spawner=SubprocessSpawner(),
        stop_grace=1,
        launch_timeout=5,
    )
    assert mgr.choose_engine(plugins.models["pref"], None) == "ready"
    # Nothing installed: the model's own order decides, and the engine gets built in its venv.
    assert mgr.choose_engine(plugins.models["only-build"], None) == "needs-build"
    assert mgr.choose_engine(plugins.models["pref"], "needs-build") == "needs-build"
