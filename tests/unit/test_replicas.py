"""Replica state machine with an injected spawner, clock and sleep: crash loops are tested in milliseconds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from xinfd.errors import LaunchError
from xinfd.processes import Spawner
from xinfd.replicas import Replica, ReplicaState, RestartPolicy
from xinfd.supervisor import ReplicaBlueprint
from xinfd.types import LaunchSpec, ReadinessProbe


class FakeHandle:
    """A scripted process: becomes ready (or not) and exits when the script says."""

    def __init__(self, pid: int, *, ready: bool, exit_code: int | None) -> None:
        self.pid = pid
        self.ready = ready
        self._exit_code = exit_code
        self.returncode: int | None = None
        self._exited = asyncio.Event()
        self.signals: list[int] = []
        if exit_code is not None:
            asyncio.get_running_loop().call_soon(self.exit, exit_code)

    def exit(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def signal_group(self, sig: int) -> None:
        self.signals.append(sig)
        self.exit(-sig)

    def group_alive(self) -> bool:
        return self.returncode is None

    def stderr_tail(self) -> list[str]:
        return [f"pid {self.pid} says goodbye"]


class ScriptedSpawner:
    """Each spawn takes the next (ready, exit_code) from the script."""

    def __init__(self, script: list[tuple[bool, int | None]]) -> None:
        self.script = list(script)
        self.handles: list[FakeHandle] = []
        self.preloads: list[tuple[str, ...]] = []

    async def spawn(
        self, argv: tuple[str, ...], *, env: Mapping[str, str], cwd: str | None, log_path: Path,
        preload: tuple[str, ...] = (),
    ) -> FakeHandle:
        self.preloads.append(preload)
        ready, exit_code = self.script.pop(0) if self.script else (True, None)
        handle = FakeHandle(1000 + len(self.handles), ready=ready, exit_code=exit_code)
        self.handles.append(handle)
        return handle


class FakeReplica(Replica):
    async def probe_body(self, *, timeout: float, path: str = "/health") -> dict[str, Any] | None:
        handle = self.handle
        ready = isinstance(handle, FakeHandle) and handle.ready and handle.returncode is None
        return {"status": "ok"} if ready else None


@dataclass
class FakeReplicas:
    """A ``ReplicaFactory`` for ModelManager tests: scripted replicas on ``spawner``, each blueprint kept."""

    spawner: Spawner
    stop_grace: float = 0.1
    built: list[ReplicaBlueprint] = field(default_factory=list)

    def __call__(self, blueprint: ReplicaBlueprint) -> Replica:
        self.built.append(blueprint)
        return FakeReplica(**blueprint.replica_args(), spawner=self.spawner, stop_grace=self.stop_grace)


def make_replica(
    tmp_path: Path,
    spawner: ScriptedSpawner,
    sleeps: list[float],
    *,
    budget: int = 3,
    timeout_s: float = 0.2,
    history: list[str] | None = None,
) -> FakeReplica:
    async def fake_sleep(delay: float) -> None:
        sleeps.append(delay)
        await asyncio.sleep(0)

    spec = LaunchSpec(argv=("worker",), readiness=ReadinessProbe(timeout_s=timeout_s, interval_s=0.001))
    return FakeReplica(
        model_uid="m",
        index=0,
        socket_path=tmp_path / "m.sock",
        log_path=tmp_path / "m.log",
        make_spec=lambda: spec,
        env={},
        spawner=spawner,
        stop_grace=0.1,
        restart=RestartPolicy(initial_delay=0.5, max_delay=4.0, budget=budget),
        sleep=fake_sleep,
        listener=(lambda r, old, new, why: history.append(new.value)) if history is not None else None,
    )


async def wait_state(replica: Replica, state: ReplicaState) -> None:
    for _ in range(2000):
        if replica.state is state:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"replica stayed {replica.state}, expected {state}")


async def test_start_ready_then_stop(tmp_path: Path) -> None:
    spawner = ScriptedSpawner([(True, None)])
    replica = make_replica(tmp_path, spawner, [])
    await replica.start()
    assert replica.state is ReplicaState.READY
    assert replica.pid == 1000
    await replica.stop()
    assert replica.state is ReplicaState.STOPPED
    assert spawner.handles[0].signals[0] == 15


async def test_exit_during_start_is_a_launch_error_with_stderr(tmp_path: Path) -> None:
    replica = make_replica(tmp_path, ScriptedSpawner([(False, 3)]), [])
    with pytest.raises(LaunchError, match=r"exited during start \(exit code 3: pid 1000 says goodbye\)"):
        await replica.start()
    assert replica.state is ReplicaState.FAILED


async def test_readiness_timeout_kills_the_process(tmp_path: Path) -> None:
    spawner = ScriptedSpawner([(False, None)])
    replica = make_replica(tmp_path, spawner, [], timeout_s=0.05)
    with pytest.raises(LaunchError, match="not ready after"):
        await replica.start()
    assert spawner.handles[0].returncode is not None


async def test_crash_loop_backs_off_exponentially_then_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="xinfd.replicas")
    sleeps: list[float] = []
    # Starts fine, then crashes; every restart crashes during start.
    spawner = ScriptedSpawner([(True, None)] + [(False, 1)] * 10)
    replica = make_replica(tmp_path, spawner, sleeps, budget=3)
    history: list[str] = []
    replica._listener = lambda r, old, new, why: history.append(new.value)
    await replica.start()
    spawner.handles[0].exit(-9)
    await wait_state(replica, ReplicaState.FAILED)
    assert history == [
        "STARTING",
        "READY",
        "BACKOFF",
        "STARTING",
        "BACKOFF",
        "STARTING",
        "BACKOFF",
        "STARTING",
        "FAILED",
    ]
    assert sleeps == [0.5, 1.0, 2.0]
    assert replica.restarts == 3
    assert replica.failure is not None and "restart budget (3) exhausted" in replica.failure
    assert (
        "replica m-r0 READY -> BACKOFF (killed by signal 9: pid 1000 says goodbye; restart 1 in 0.5s)"
        in caplog.text
    )
    assert len(spawner.handles) == 4


async def test_crash_then_successful_restart_returns_ready(tmp_path: Path) -> None:
    sleeps: list[float] = []
    history: list[str] = []
    spawner = ScriptedSpawner([(True, None), (True, None)])
    replica = make_replica(tmp_path, spawner, sleeps, history=history)
    await replica.start()
    spawner.handles[0].exit(17)
    for _ in range(1000):
        if replica.pid == 1001 and replica.state is ReplicaState.READY:
            break
        await asyncio.sleep(0.001)
    assert history == ["STARTING", "READY", "BACKOFF", "STARTING", "READY"]
    assert replica.pid == 1001
    assert replica.last_exit is not None and replica.last_exit.returncode == 17
    await replica.stop()


async def test_illegal_transition_is_refused(tmp_path: Path) -> None:
    replica = make_replica(tmp_path, ScriptedSpawner([]), [])
    with pytest.raises(RuntimeError, match="illegal transition STOPPED -> READY"):
        replica.transition(ReplicaState.READY, "test")
