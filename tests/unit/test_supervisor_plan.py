"""The pure parts of the supervisor: launch plan, replica identity, launch events (no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_models import TwoEngines
from xinfd.errors import ModelExistsError, PlacementError, UnknownEngineError, UnknownModelError
from xinfd.events import Failed, Ready, ReplicaReady, ReplicaStarting, VenvProgress
from xinfd.gpus import SlotTable
from xinfd.plugins import make_plugin_manager
from xinfd.supervisor import LaunchRequest
from xinfd.supervisor.identity import RuntimeLayout
from xinfd.supervisor.plan import choose_engine, plan_launch
from xinfd.types import GpuInfo, ModelSpec, Platform, ReplicaContext

GPUS = tuple(GpuInfo(index=i, name=f"G{i}", memory_mb=1000) for i in range(2))
PLATFORM = Platform(system="Linux", machine="x86_64", python_version="3.11.7", gpus=GPUS)


def plan(request: LaunchRequest, *, running: tuple[str, ...] = (), slots: SlotTable | None = None) -> object:
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[TwoEngines()], env={})
    return plan_launch(
        request,
        models=plugins.models,
        running=running,
        choose_engine=lambda spec, wanted: choose_engine(plugins, PLATFORM, spec, wanted),
        slots=slots or SlotTable(GPUS),
    )


def test_a_plan_names_the_engine_and_places_every_replica_without_reserving() -> None:
    slots = SlotTable(GPUS)
    launch = plan(LaunchRequest(model_name="m", model_uid="u", replica=3), slots=slots)
    assert (launch.uid, launch.engine) == ("u", "gpuonly")  # type: ignore[attr-defined]
    assert [p.gpu_indices for p in launch.placements] == [(0,), (1,), (0,)]  # type: ignore[attr-defined]
    assert slots.placements("u") == [] and slots.holders(0) == []


@pytest.mark.parametrize(
    ("request_", "running", "error", "match"),
    [
        (LaunchRequest(model_name="x"), (), UnknownModelError, r"unknown model 'x' \(known: m\)"),
        (LaunchRequest(model_name="m"), ("m",), ModelExistsError, "already launched"),
        (LaunchRequest(model_name="m", model_engine="missing"), (), UnknownEngineError, "missing"),
        (LaunchRequest(model_name="m", gpu_idx=(5,)), (), PlacementError, "GPU index 5 does not exist"),
    ],
)
def test_a_request_that_cannot_be_honoured_has_no_plan(
    request_: LaunchRequest, running: tuple[str, ...], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        plan(request_, running=running)


def test_engine_choice_prefers_an_engine_whose_packages_are_installed() -> None:
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[TwoEngines()], env={})
    spec: ModelSpec = plugins.models["m"]
    assert choose_engine(plugins, PLATFORM, spec, None, installed=lambda module: True) == "gpuonly"
    cpu_only = Platform(system="Linux", machine="x86_64", python_version="3.11.7")
    assert choose_engine(plugins, cpu_only, spec, None) == "cpu"


def test_the_worker_and_the_daemon_name_a_replica_the_same_way(tmp_path: Path) -> None:
    layout = RuntimeLayout.for_home(tmp_path)
    identity = layout.replica("echo", 0)
    context = ReplicaContext(model_uid="echo", model_name="echo", engine="echo", replica_index=0,
                             socket_path=str(identity.socket_path), python="python")
    assert identity.label == context.label == "echo-r0"
    assert identity.socket_path.name == "echo-r0.sock" and identity.socket_path.parent == layout.run_dir
    assert identity.log_path == tmp_path / "logs" / "echo-r0.log"
    assert identity.pid_file.name == "echo-r0.pid"


def test_a_long_home_keeps_socket_paths_within_the_unix_limit(tmp_path: Path) -> None:
    home = tmp_path / ("h" * 90)
    identity = RuntimeLayout.for_home(home).replica("m" * 64, 255)
    assert len(str(identity.socket_path)) < 108 and identity.log_path.parent == home / "logs"


def test_events_keep_the_ndjson_shape_xinfctl_reads() -> None:
    assert ReplicaStarting(replica=1, message="starting replica m-r1").to_json() == {
        "event": "replica_starting", "message": "starting replica m-r1", "replica": 1}
    assert ReplicaReady(replica=0, pid=None, message="x").to_json() == {
        "event": "replica_ready", "message": "x", "replica": 0, "pid": None}
    assert Failed(code="launch_failed", message="boom").to_json() == {
        "event": "error", "message": "boom", "code": "launch_failed"}
    assert Ready(message="ok", model={"model_uid": "m"}).to_json() == {
        "event": "ready", "message": "ok", "model": {"model_uid": "m"}}
    assert VenvProgress(message="building").to_json() == {"event": "venv", "message": "building"}
