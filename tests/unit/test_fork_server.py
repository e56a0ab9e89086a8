"""Fork servers (``xinfd.forkserver``, ``xinfd.fork_client``, ``xinfd.preloading``) with real processes.

The preloaded module here is a file of the test's own that counts its imports in a file, and the forked
"replica" is a module that reports what it became (pid, parent, session, cwd, argv, environment, stdin) on
its stdout, i.e. in its log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from xinfd import fork_protocol
from xinfd.fork_client import ForkedHandle
from xinfd.forkserver import _thread_count
from xinfd.preloading import PER_REPLICA_ENV, PreloadingSpawner, ServerKey
from xinfd.processes import SubprocessHandle, stop_group

REPO = Path(__file__).resolve().parents[2]

REPORTER = """\
import json, os, signal, sys, time
NAMES = ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "SHARED", "XINFD_WORKER_CONTEXT")
print(json.dumps({
    "pid": os.getpid(), "ppid": os.getppid(), "sid": os.getsid(0), "pgid": os.getpgid(0), "cwd": os.getcwd(),
    "argv": sys.argv, "name": __name__, "stdin": sys.stdin.read(),
    "env": {k: os.environ.get(k) for k in NAMES},
    "preloaded": "heavy_module" in sys.modules,
    "sigterm_default": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
}), flush=True)
if os.environ.get("SLEEP"):
    time.sleep(float(os.environ["SLEEP"]))
sys.exit(int(os.environ.get("EXIT_CODE", "0")))
"""


@pytest.fixture
def modules(tmp_path: Path) -> Path:
    """A folder with the preloaded module (it appends a line to ``imports.txt`` per import) and the reporter."""
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "heavy_module.py").write_text(textwrap.dedent(f"""\
        with open({str(tmp_path / "imports.txt")!r}, "a") as f:
            f.write("imported\\n")
    """))
    (folder / "broken_module.py").write_text("raise ImportError('this preload cannot be imported')\n")
    (folder / "reporter.py").write_text(REPORTER)
    return folder


def base_env(modules: Path, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": f"{modules}{os.pathsep}{REPO}",
            "SHARED": "same", **extra}


@pytest.fixture
async def spawner(tmp_path: Path) -> AsyncIterator[PreloadingSpawner]:
    made = PreloadingSpawner(log_dir=tmp_path / "logs", start_timeout=60, linger=60)
    yield made
    await made.close()


def report(log_path: Path) -> dict[str, Any]:
    line = next(line for line in log_path.read_text().splitlines() if line.startswith("{"))
    result: dict[str, Any] = json.loads(line)
    return result


async def spawn_reporter(spawner: PreloadingSpawner, tmp_path: Path, name: str, env: dict[str, str],
                         preload: tuple[str, ...] = ("heavy_module",), cwd: str | None = None) -> Any:
    return await spawner.spawn((sys.executable, "-m", "reporter", "one", "two"), env=env, cwd=cwd,
                               log_path=tmp_path / "logs" / f"{name}.log", preload=preload)


async def test_a_forked_replica_becomes_what_python_m_would_be(spawner: PreloadingSpawner, modules: Path,
                                                               tmp_path: Path) -> None:
    env = base_env(modules, OMP_NUM_THREADS="2", CUDA_VISIBLE_DEVICES="", XINFD_WORKER_CONTEXT="{}", EXIT_CODE="7")
    handle = await spawn_reporter(spawner, tmp_path, "r0", env, cwd=str(tmp_path))
    assert isinstance(handle, ForkedHandle)
    assert await handle.wait() == 7 and handle.returncode == 7
    seen = report(tmp_path / "logs" / "r0.log")
    [server] = spawner.servers()
    assert seen["pid"] == handle.pid and seen["ppid"] == server["pid"]
    assert seen["sid"] == seen["pgid"] == handle.pid  # its own session: a stop reaches its whole group
    assert seen["cwd"] == str(tmp_path) and seen["name"] == "__main__"
    assert seen["argv"][1:] == ["one", "two"] and seen["argv"][0].endswith("reporter.py")
    assert seen["stdin"] == "" and seen["preloaded"] and seen["sigterm_default"]
    assert seen["env"] == {"OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": "", "SHARED": "same",
                           "XINFD_WORKER_CONTEXT": "{}"}


async def test_replicas_of_one_key_share_a_server_and_keep_their_own_per_replica_values(
    spawner: PreloadingSpawner, modules: Path, tmp_path: Path
) -> None:
    first = await spawn_reporter(spawner, tmp_path, "a", base_env(modules, OMP_NUM_THREADS="1",
                                                                   XINFD_WORKER_CONTEXT="a"))
    second = await spawn_reporter(spawner, tmp_path, "b", base_env(modules, OMP_NUM_THREADS="3",
                                                                    CUDA_VISIBLE_DEVICES="", XINFD_WORKER_CONTEXT="b"))
    assert await first.wait() == 0 and await second.wait() == 0
    a, b = report(tmp_path / "logs" / "a.log"), report(tmp_path / "logs" / "b.log")
    assert a["ppid"] == b["ppid"] and len(spawner.servers()) == 1
    assert (a["env"]["OMP_NUM_THREADS"], b["env"]["OMP_NUM_THREADS"]) == ("1", "3")
    assert (a["env"]["XINFD_WORKER_CONTEXT"], b["env"]["XINFD_WORKER_CONTEXT"]) == ("a", "b")
    # The module was imported once, by the server; neither child imported it again.
    assert (tmp_path / "imports.txt").read_text().count("imported") == 1


async def test_an_environment_that_differs_elsewhere_gets_its_own_server(
    spawner: PreloadingSpawner, modules: Path, tmp_path: Path
) -> None:
    # A library may read HF_HOME or HF_HUB_OFFLINE at import: a server imported under other values is not shared.
    first = await spawn_reporter(spawner, tmp_path, "a", base_env(modules))
    second = await spawn_reporter(spawner, tmp_path, "b", {**base_env(modules), "SHARED": "other"})
    await first.wait(), await second.wait()
    assert report(tmp_path / "logs" / "a.log")["ppid"] != report(tmp_path / "logs" / "b.log")["ppid"]
    assert len(spawner.servers()) == 2


def test_the_key_leaves_out_only_what_differs_between_replicas_of_one_launch() -> None:
    env = {"A": "1", **{name: "x" for name in PER_REPLICA_ENV}}
    key = ServerKey.of("/py", ("m",), env)
    assert key == ServerKey.of("/py", ("m",), {"A": "1"})
    assert key != ServerKey.of("/py", ("m",), {"A": "2"})
    assert key != ServerKey.of("/other/py", ("m",), {"A": "1"})
    assert key.server_env() == {"A": "1", "CUDA_VISIBLE_DEVICES": ""}  # a server never sees a GPU


def test_a_venv_rebuilt_at_the_same_path_is_a_new_key(tmp_path: Path) -> None:
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    before = ServerKey.of(str(python), ("m",), {})
    assert ServerKey.of(str(python), ("m",), {}) == before
    staged = tmp_path / "python.new"  # an atomic rebuild: a new link renamed over the old one
    staged.symlink_to(sys.executable)
    staged.rename(python)
    assert ServerKey.of(str(python), ("m",), {}) != before


async def test_a_stop_signals_the_forked_group_and_reports_the_signal(
    spawner: PreloadingSpawner, modules: Path, tmp_path: Path
) -> None:
    handle = await spawn_reporter(spawner, tmp_path, "slow", base_env(modules, SLEEP="60"))
    while not (tmp_path / "logs" / "slow.log").read_text():
        await asyncio.sleep(0.02)
    assert handle.group_alive()
    assert await stop_group(handle, stop_signal=signal.SIGTERM, grace=5) == -signal.SIGTERM
    assert not handle.group_alive()


async def test_when_the_server_dies_its_replicas_die_and_their_handles_say_so(
    spawner: PreloadingSpawner, modules: Path, tmp_path: Path
) -> None:
    handle = await spawn_reporter(spawner, tmp_path, "orphan", base_env(modules, SLEEP="60"))
    [server] = spawner.servers()
    os.kill(int(str(server["pid"])), signal.SIGKILL)
    assert await asyncio.wait_for(handle.wait(), timeout=10) == -signal.SIGKILL
    # The next spawn of that key starts a new server rather than failing.
    again = await spawn_reporter(spawner, tmp_path, "again", base_env(modules))
    assert isinstance(again, ForkedHandle) and await again.wait() == 0
    assert report(tmp_path / "logs" / "again.log")["ppid"] != server["pid"]


async def test_a_preload_that_cannot_be_imported_falls_back_to_exec_once_warned(
    spawner: PreloadingSpawner, modules: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="xinfd.preloading")
    handle = await spawn_reporter(spawner, tmp_path, "a", base_env(modules), preload=("broken_module",))
    assert isinstance(handle, SubprocessHandle) and await handle.wait() == 0
    assert report(tmp_path / "logs" / "a.log")["ppid"] == os.getpid()  # exec'd by us, as without a server
    assert "this preload cannot be imported" in caplog.text and "the ordinary way" in caplog.text
    caplog.clear()
    second = await spawn_reporter(spawner, tmp_path, "b", base_env(modules), preload=("broken_module",))
    assert isinstance(second, SubprocessHandle) and await second.wait() == 0
    assert "did not start" not in caplog.text  # the failure is remembered, not retried at every launch


async def test_specs_without_preloads_and_a_disabled_spawner_exec(modules: Path, tmp_path: Path) -> None:
    for spawner, preload in ((PreloadingSpawner(log_dir=tmp_path / "logs"), ()),
                             (PreloadingSpawner(log_dir=tmp_path / "logs", enabled=False), ("heavy_module",))):
        handle = await spawn_reporter(spawner, tmp_path, "x", base_env(modules), preload=preload)
        assert isinstance(handle, SubprocessHandle) and await handle.wait() == 0
        assert spawner.servers() == []
        await spawner.close()


async def test_an_unpinned_server_closes_after_its_linger_and_a_prewarmed_one_stays(
    modules: Path, tmp_path: Path
) -> None:
    spawner = PreloadingSpawner(log_dir=tmp_path / "logs", linger=0.2)
    try:
        handle = await spawn_reporter(spawner, tmp_path, "a", base_env(modules))
        [server] = spawner.servers()
        await handle.wait()
        for _ in range(200):
            if not spawner.servers():
                break
            await asyncio.sleep(0.05)
        assert spawner.servers() == []
        for _ in range(200):  # it exits at end of stream, and the close reaps it
            if not Path(f"/proc/{server['pid']}").exists():
                break
            await asyncio.sleep(0.05)
        assert not Path(f"/proc/{server['pid']}").exists()

        assert await spawner.prewarm(sys.executable, ("heavy_module",), base_env(modules))
        [pinned] = spawner.servers()
        assert pinned["pinned"] and pinned["replicas"] == 0
        handle = await spawn_reporter(spawner, tmp_path, "b", base_env(modules, OMP_NUM_THREADS="1"))
        assert report_after(handle, tmp_path / "logs" / "b.log", await handle.wait())["ppid"] == pinned["pid"]
        await asyncio.sleep(0.5)
        assert [s["pid"] for s in spawner.servers()] == [pinned["pid"]]
    finally:
        await spawner.close()


def report_after(handle: Any, log_path: Path, code: int) -> dict[str, Any]:
    assert code == 0, log_path.read_text()
    return report(log_path)


async def test_a_server_refuses_a_malformed_spawn_and_keeps_serving(
    spawner: PreloadingSpawner, modules: Path, tmp_path: Path
) -> None:
    assert await spawner.prewarm(sys.executable, ("heavy_module",), base_env(modules))
    [entry] = spawner._entries.values()  # the client's own socket: send what the daemon never would
    server = entry.server
    assert server._sock is not None
    fork_protocol.send(server._sock, {"op": "spawn", "id": 999, "argv": ["python", "not-dash-m"], "env": {},
                                      "cwd": None}, (0, 1))
    await asyncio.sleep(0.3)
    handle = await spawn_reporter(spawner, tmp_path, "after", base_env(modules))
    assert await handle.wait() == 0 and report(tmp_path / "logs" / "after.log")["ppid"] == server.pid


def test_thread_count_reads_omp_num_threads_as_a_fresh_torch_would() -> None:
    assert _thread_count("3") == 3
    assert _thread_count("4,2") == 4  # nested OpenMP levels: the outer one
    assert _thread_count(None) == _thread_count("") == _thread_count("zero") == len(os.sched_getaffinity(0))


async def test_a_spawn_cancelled_before_the_answer_leaves_no_child_running(
    spawner: PreloadingSpawner, modules: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="xinfd.fork_client")
    slow = base_env(modules, SLEEP="60")
    assert await spawner.prewarm(sys.executable, ("heavy_module",), slow)
    [server] = spawner.servers()
    [entry] = spawner._entries.values()
    assert entry.server._sock is not None
    fd = entry.server._sock.fileno()
    loop = asyncio.get_running_loop()
    loop.remove_reader(fd)  # hold the answer back: the launch is cancelled after the fork, before the reply
    children = Path(f"/proc/{server['pid']}/task/{server['pid']}/children")
    task = asyncio.create_task(spawn_reporter(spawner, tmp_path, "abandoned", slow))
    for _ in range(200):
        await asyncio.sleep(0.02)
        if children.read_text().split():
            break
    assert children.read_text().split(), "the server did not fork"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    loop.add_reader(fd, entry.server._on_readable)
    for _ in range(100):  # the child is killed when the answer arrives, and the server reaps it
        await asyncio.sleep(0.05)
        if not children.read_text().split():
            break
    assert children.read_text().split() == []
    assert "after its launch was abandoned; killing it" in caplog.text
    # The server is still usable.
    handle = await spawn_reporter(spawner, tmp_path, "next", slow)
    assert children.read_text().split() == [str(handle.pid)]
    assert await stop_group(handle, stop_signal=signal.SIGTERM, grace=5) == -signal.SIGTERM
