"""ModelManager, scripted spawner: placement before spawn, CUDA_VISIBLE_DEVICES, scale, desired state."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_models import TwoEngines
from tests.unit.test_replicas import FakeHandle, FakeReplicas, ScriptedSpawner
from xinfd.errors import InvalidRequestError, PlacementError
from xinfd.gpus import SlotTable
from xinfd.plugins import make_plugin_manager
from xinfd.replica_launch import CONTEXT_ENV, decode_context
from xinfd.supervisor import LaunchRequest, ModelManager
from xinfd.supervisor.desired_state import DesiredState
from xinfd.types import GpuInfo, Platform


class RecordingSpawner(ScriptedSpawner):
    def __init__(self) -> None:
        super().__init__([])
        self.envs: list[Mapping[str, str]] = []

    async def spawn(
        self, argv: tuple[str, ...], *, env: Mapping[str, str], cwd: str | None, log_path: Path,
        preload: tuple[str, ...] = (),
    ) -> FakeHandle:
        self.envs.append(dict(env))
        return await super().spawn(argv, env=env, cwd=cwd, log_path=log_path, preload=preload)


def make_manager(
    tmp_path: Path,
    spawner: RecordingSpawner,
    *,
    gpus: int = 2,
    allow_multi: bool = True,
    desired: bool = True,
    cpus: range = range(4),
) -> ModelManager:
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[TwoEngines()], env={})
    inventory = tuple(GpuInfo(index=i, name=f"G{i}", memory_mb=1000) for i in range(gpus))
    platform = Platform(system="Linux", machine="x86_64", python_version="3.11.7", gpus=inventory)
    return ModelManager(
        plugins=plugins,
        platform=platform,
        home=tmp_path,
        spawner=spawner,
        stop_grace=0.1,
        launch_timeout=5,
        base_env={"PATH": "/bin"},
        slots=SlotTable(inventory, allow_multi_replica_per_gpu=allow_multi, cpus=cpus),
        desired=DesiredState(tmp_path) if desired else None,
        max_concurrency=2,
        max_queue=3,
        replica_factory=FakeReplicas(spawner),
    )


async def launch(mgr: ModelManager, **kw: Any) -> Any:
    model = mgr.start_launch(LaunchRequest(model_name="m", model_engine="cpu", **kw))
    return await mgr.wait_until_launched(model)


async def test_replicas_get_their_slots_in_cuda_visible_devices(tmp_path: Path) -> None:
    spawner = RecordingSpawner()
    mgr = make_manager(tmp_path, spawner)
    model = await launch(mgr, replica=3)
    assert sorted(e["CUDA_VISIBLE_DEVICES"] for e in spawner.envs) == ["0", "0", "1"]
    assert [r.gpu_indices for r in model.replicas] == [(0,), (1,), (0,)]
    assert [len(row["replicas"]) for row in mgr.slots.snapshot()] == [2, 1]
    assert model.router.max_concurrency == 2 and model.router.max_queue == 3
    await mgr.terminate("m")
    assert [row["replicas"] for row in mgr.slots.snapshot()] == [[], []]  # freed once the groups are gone


async def test_cpu_replica_sees_no_gpu(tmp_path: Path) -> None:
    spawner = RecordingSpawner()
    mgr = make_manager(tmp_path, spawner)
    await launch(mgr, n_gpu=0)
    assert spawner.envs[0]["CUDA_VISIBLE_DEVICES"] == ""
    await mgr.close()


async def test_cpu_replicas_get_their_share_of_the_cores_in_env_and_context(tmp_path: Path) -> None:
    spawner = RecordingSpawner()
    mgr = make_manager(tmp_path, spawner, gpus=0, cpus=range(4))
    await launch(mgr, replica=2, model_uid="split")
    contexts = [decode_context(e[CONTEXT_ENV])[0] for e in spawner.envs]
    assert sorted((c.cpu_threads, c.cpu_affinity) for c in contexts) == [(2, (0, 1)), (2, (2, 3))]
    assert [(e["OMP_NUM_THREADS"], e["MKL_NUM_THREADS"]) for e in spawner.envs] == [("2", "2"), ("2", "2")]
    # An explicit --env OMP_NUM_THREADS is kept, and counts as the launch's thread count; the other
    # variables follow it. A scale-up adds a replica with the launch's count, not pinned (no free core).
    await launch(mgr, model_uid="own", env={"OMP_NUM_THREADS": "3"})
    own = spawner.envs[2]
    assert (own["OMP_NUM_THREADS"], own["MKL_NUM_THREADS"]) == ("3", "3")
    assert decode_context(own[CONTEXT_ENV])[0].cpu_threads == 3
    await mgr.scale("split", 3)
    added = decode_context(spawner.envs[3][CONTEXT_ENV])[0]
    assert (added.cpu_threads, added.cpu_affinity) == (1, ())
    labels = [r["label"] for r in mgr.slots.cpu_snapshot()["replicas"]]
    assert labels == ["own-r0", "split-r0", "split-r1", "split-r2"]
    await mgr.close()
    assert mgr.slots.cpu_snapshot()["replicas"] == []


async def test_a_launch_cpu_threads_is_the_replicas_count(tmp_path: Path) -> None:
    spawner = RecordingSpawner()
    mgr = make_manager(tmp_path, spawner, gpus=0, cpus=range(2))
    await launch(mgr, replica=2, cpu_threads=1)
    assert [decode_context(e[CONTEXT_ENV])[0].cpu_affinity for e in spawner.envs] == [(0,), (1,)]
    assert [e["OMP_NUM_THREADS"] for e in spawner.envs] == ["1", "1"]
    assert DesiredState(tmp_path).load()[0]["cpu_threads"] == 1
    await mgr.close()


async def test_impossible_placement_is_refused_before_anything_spawns(tmp_path: Path) -> None:
    spawner = RecordingSpawner()
    mgr = make_manager(tmp_path, spawner, allow_multi=False)
    await launch(mgr, replica=2, model_uid="a")
    with pytest.raises(PlacementError, match="only 0 are idle"):
        mgr.start_launch(LaunchRequest(model_name="m", model_engine="cpu", model_uid="b"))
    with pytest.raises(PlacementError, match="GPU index 7 does not exist"):
        mgr.start_launch(LaunchRequest(model_name="m", model_engine="cpu", model_uid="c", gpu_idx=(7,)))
    assert len(spawner.envs) == 2 and set(mgr.models) == {"a"}
    await mgr.close()


async def test_scale_up_and_down_live_and_persist_the_count(tmp_path: Path) -> None:
    spawner = RecordingSpawner()
    mgr = make_manager(tmp_path, spawner)
    model = await launch(mgr, replica=1)
    await mgr.scale("m", 3)
    assert [r.index for r in model.replicas] == [0, 1, 2]
    assert all(r.is_ready for r in model.replicas)
    assert json.loads((tmp_path / "state.json").read_text())["models"][0]["replica"] == 3
    doomed = model.replicas[1:]
    snapshot = await mgr.scale("m", 1)
    assert [r["index"] for r in snapshot["replicas"]] == [0]
    assert all(r.state.value == "STOPPED" for r in doomed)
    assert [len(row["replicas"]) for row in mgr.slots.snapshot()] == [1, 0]
    assert DesiredState(tmp_path).load()[0]["replica"] == 1
    with pytest.raises(InvalidRequestError, match="replicas must be an integer"):
        await mgr.scale("m", 0)
    await mgr.close()


async def test_scale_up_beyond_the_gpus_is_refused_without_spawning(tmp_path: Path) -> None:
    spawner = RecordingSpawner()
    mgr = make_manager(tmp_path, spawner, allow_multi=False)
    await launch(mgr, replica=1)
    with pytest.raises(PlacementError):
        await mgr.scale("m", 3)
    assert len(spawner.envs) == 1 and len(mgr.models["m"].replicas) == 1
    await mgr.close()


async def test_desired_state_survives_shutdown_and_is_restored(tmp_path: Path) -> None:
    mgr = make_manager(tmp_path, RecordingSpawner())
    await launch(mgr, replica=2, model_uid="kept", env={"A": "1"}, options={"x": "y"}, gpu_idx=(1,))
    await launch(mgr, model_uid="gone")
    await mgr.terminate("gone")
    await mgr.close()  # a daemon shutdown: the state file still lists "kept"
    entries = DesiredState(tmp_path).load()
    assert [e["model_uid"] for e in entries] == ["kept"]

    spawner = RecordingSpawner()
    again = make_manager(tmp_path, spawner)
    restored = again.restore()
    assert [m.uid for m in restored] == ["kept"]
    model = await again.wait_until_launched(restored[0])
    assert model.request.replica == 2 and dict(model.request.options) == {"x": "y"}
    assert [e["CUDA_VISIBLE_DEVICES"] for e in spawner.envs] == ["1", "1"] and spawner.envs[0]["A"] == "1"
    await again.close()


async def test_invalid_entries_are_dropped_and_unlaunchable_ones_kept_failed(tmp_path: Path) -> None:
    # An entry that is no launch request (a uid with a newline) is dropped; a valid one that cannot be launched
    # now (its family or GPU is missing) stays wanted, listed FAILED with the reason.
    DesiredState(tmp_path).save([{"model_uid": "x", "model_name": "nope"}, {"model_uid": "y\n", "model_name": "m"}])
    mgr = make_manager(tmp_path, RecordingSpawner())
    assert mgr.restore() == []
    assert [(e["model_uid"], e["model_name"]) for e in DesiredState(tmp_path).load()] == [("x", "nope")]
    (listed,) = mgr.list()
    assert listed["model_uid"] == "x" and listed["state"] == "FAILED" and "unknown model 'nope'" in listed["error"]
    await mgr.terminate("x")
    assert DesiredState(tmp_path).load() == [] and mgr.list() == []


async def test_terminate_while_launching_frees_the_slots(tmp_path: Path) -> None:
    spawner = RecordingSpawner()
    spawner.script = [(False, None)]  # never becomes ready
    mgr = make_manager(tmp_path, spawner)
    model = mgr.start_launch(LaunchRequest(model_name="m", model_engine="cpu"))
    await asyncio.sleep(0.05)
    assert model.state == "LAUNCHING"
    await mgr.terminate("m")
    assert mgr.models == {} and mgr.slots.holders(0) == []
    assert spawner.handles[0].returncode is not None


def test_launch_request_round_trips_through_the_state_file_with_every_field() -> None:
    # A field added to LaunchRequest but forgotten in to_json would be lost on every daemon restart.
    request = LaunchRequest(
        model_name="m",
        model_engine="cpu",
        replica=3,
        model_uid="u",
        env={"A": "1"},
        options={"k": "v"},
        enable_virtual_env=False,
        virtual_env_packages=("pkg==1",),
        python="3.11",
        n_gpu=2,
        gpu_idx=(0, 1),
        model_format="gguf",
        model_size_in_billions=0.5,
        quantization="Q4_K_M",
        cpu_threads=2,
    )
    body = request.to_json()
    unset = [
        f.name
        for f in dataclasses.fields(LaunchRequest)
        if getattr(request, f.name) == f.default or f.name not in body
    ]
    assert unset == [], f"fill these in the test and in to_json: {unset}"
    assert LaunchRequest.from_json(json.loads(json.dumps(body))) == request
