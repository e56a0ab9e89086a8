"""``child_setup``: every child xinfd starts leads its own session and is killed when its parent dies."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xinfd.childproc import child_setup
from xinfd.orphans import process_start_time

# An intermediate parent (standing in for the daemon) that starts `sleep` through the helper, says its pid
# and waits to be killed.
_PARENT = """
import subprocess, sys, time
from xinfd.childproc import child_setup
child = subprocess.Popen(["sleep", "300"], preexec_fn=child_setup)
print(child.pid, flush=True)
time.sleep(300)
"""


def _gone(pid: int) -> bool:
    return process_start_time(pid) is None  # no such process, or a zombie waiting for init to reap it


def test_child_leads_its_own_session() -> None:
    child = subprocess.Popen(["sleep", "30"], preexec_fn=child_setup)
    try:
        assert os.getsid(child.pid) == child.pid
        assert os.getpgid(child.pid) == child.pid
        assert os.getsid(child.pid) != os.getsid(0)
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_child_is_killed_when_its_parent_dies() -> None:
    with subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True) as parent:
        child_pid: int | None = None
        try:
            assert parent.stdout is not None
            child_pid = int(parent.stdout.readline())
            assert os.getsid(child_pid) == child_pid and not _gone(child_pid)
            with open(f"/proc/{child_pid}/status") as status:  # the sleep is that parent's child
                assert any(line.split() == ["PPid:", str(parent.pid)] for line in status)
            os.kill(parent.pid, signal.SIGKILL)
            parent.wait()
            deadline = time.monotonic() + 5
            while not _gone(child_pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _gone(child_pid), f"sleep {child_pid} survived the SIGKILL of its parent"
        finally:
            if parent.poll() is None:
                parent.kill()
                parent.wait()
            if child_pid is not None and not _gone(child_pid):
                os.kill(child_pid, signal.SIGKILL)


async def test_every_spawn_site_uses_the_helper(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The replica spawner, uv/pip builds, interpreter probes and ``pip config``: all pass ``child_setup``."""
    from xinfd.processes import SubprocessSpawner
    from xinfd.venvs import builder, pipconfig, python

    seen: list[object] = []
    real = asyncio.create_subprocess_exec

    async def spy(*args: object, **kwargs: object) -> asyncio.subprocess.Process:
        seen.append(kwargs.get("preexec_fn"))
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spy)
    handle = await SubprocessSpawner().spawn(("true",), env={}, cwd=None, log_path=tmp_path / "r.log")
    await handle.wait()
    await builder.run_logged(["true"], env={}, deadline=time.monotonic() + 10, what="true")
    await builder._run_python(sys.executable, ["-c", "pass"], time.monotonic() + 10,
                              builder.BuildLog(tmp_path / "build.log"))
    await python._run(["true"], {})
    await pipconfig.PipConfig(command=["true"], env={}).options()
    assert seen == [child_setup] * 5
