"""``python -m xinfd.worker`` as a real process, and its plugin loading."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import xinfd.worker.__main__ as worker_main
from xinfd.plugins import make_plugin_manager
from xinfd.types import ModelSpec, ReplicaContext, ReplicaSettings
from xinfd.worker.launch import CONTEXT_ENV, encode_context
from xinfd.worker.sse import decode_events

ROOT = Path(__file__).resolve().parents[3]
ECHO_SPEC = ModelSpec(name="echo", abilities=("chat", "generate"), engines=("echo",), context_length=4096)


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer than that.
    with tempfile.TemporaryDirectory(prefix="xw", dir="/tmp") as path:
        yield Path(path)


def worker_env(
    socket_path: Path, options: Mapping[str, Any] | None = None, settings: ReplicaSettings | None = None
) -> dict[str, str]:
    replica = ReplicaContext(
        model_uid="echo-1",
        model_name="echo",
        engine="echo",
        replica_index=0,
        socket_path=str(socket_path),
        python=sys.executable,
        options=dict(options or {}),
        settings=settings or ReplicaSettings(),
    )
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "plugins" / "xinfd-echo")]),
        XINFD_DISABLE_PLUGIN_AUTOLOAD="1",
        XINFD_PLUGINS="xinfd_echo.plugin",
        **{CONTEXT_ENV: encode_context(replica, ECHO_SPEC)},
    )
    return env


class Worker:
    """A worker process with its stderr in a file, killed at the end of the test if still running."""

    def __init__(
        self,
        run_dir: Path,
        options: Mapping[str, Any] | None = None,
        settings: ReplicaSettings | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.socket = run_dir / "sock" / "w.sock"
        self.stderr_path = run_dir / "stderr.log"
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "xinfd.worker"],
                env={**worker_env(self.socket, options, settings), **(extra_env or {})},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.socket)))

    async def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        async with self.session() as session:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"worker exited with {self.proc.returncode}: {self.stderr}"
                try:
                    async with session.get("http://replica/health") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"worker not ready after {timeout}s: {self.stderr}")

    async def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert self.proc.returncode is not None, f"worker still running after {timeout}s"
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def start_worker(run_dir: Path) -> Iterator[Any]:
    workers: list[Worker] = []

    def start(options: Mapping[str, Any] | None = None, **kw: Any) -> Worker:
        workers.append(Worker(run_dir, options, **kw))
        return workers[-1]

    yield start
    for worker in workers:
        worker.kill()


async def test_worker_serves_then_stops_on_sigterm(start_worker: Any) -> None:
    worker = start_worker()
    await worker.wait_ready()
    async with (
        worker.session() as session,
        session.post(
            "http://replica/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "ping from the daemon"}]},
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["X-Xinfd-Replica"] == "echo-1-r0"
        data = await resp.json()
    assert data["choices"][0]["message"]["content"] == "ping from the daemon"
    worker.proc.send_signal(signal.SIGTERM)
    assert await worker.wait_exit(5) == 0
    assert not worker.socket.exists()
    assert "[echo-1-r0]" in worker.stderr  # every log line names the replica


async def test_sigterm_aborts_a_running_stream_and_exits_promptly(start_worker: Any) -> None:
    worker = start_worker({"delay": "0.05"})
    await worker.wait_ready()
    prompt = " ".join(["word"] * 400)  # 20 s of tokens
    async with (
        worker.session() as session,
        session.post("http://replica/v1/completions", json={"prompt": prompt, "stream": True}) as resp,
    ):
        await resp.content.readuntil(b"\n\n")
        started = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        events = decode_events(await resp.read())
    assert events[-1]["error"]["code"] == "shutting_down"  # an error frame, no [DONE]: "abort" is not OpenAI's
    assert await worker.wait_exit(5) == 0
    assert time.monotonic() - started < 5


async def test_failed_load_exits_3_with_the_reason_last_on_stderr(start_worker: Any) -> None:
    worker = start_worker({"fail_load": "no weights in /models/echo"})
    assert await worker.wait_exit(20) == 3
    last_line = worker.stderr.strip().splitlines()[-1]
    assert "no weights in /models/echo" in last_line
    assert last_line.startswith("xinfd.worker: cannot load model 'echo'")
    assert not worker.socket.exists()


async def test_crash_after_kills_the_process_once_the_answer_is_out(start_worker: Any) -> None:
    worker = start_worker({"crash_after": "1"})
    await worker.wait_ready()
    async with (
        worker.session() as session,
        session.post("http://replica/v1/completions", json={"prompt": "last words"}) as resp,
    ):
        assert (await resp.json())["choices"][0]["text"] == "last words"
    assert await worker.wait_exit(5) == 17


async def test_ignored_sigterm_stays_ignored(start_worker: Any) -> None:
    worker = start_worker({"ignore_sigterm": "true"})
    await worker.wait_ready()
    worker.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    assert worker.proc.poll() is None  # the daemon's SIGKILL escalation is what ends this one


def test_missing_context_is_a_usage_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != CONTEXT_ENV}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "xinfd.worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert CONTEXT_ENV in proc.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its reaper counts as dead)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


# -- plugin loading (the loader itself is xinfd.plugins, tested in tests/unit/test_plugins.py) ----------------


def test_load_model_reports_a_missing_engine() -> None:
    plugins = make_plugin_manager(env={"XINFD_DISABLE_PLUGIN_AUTOLOAD": "1", "XINFD_PLUGINS": "no_such_mod"})
    replica = ReplicaContext(
        model_uid="m", model_name="m", engine="nope", replica_index=0, socket_path="/x", python=sys.executable
    )
    with pytest.raises(RuntimeError, match=r"no plugin provides the engine 'nope' .*no_such_mod"):
        worker_main.load_model(plugins, replica, ECHO_SPEC)


def test_load_model_with_explicit_plugin() -> None:
    plugins = make_plugin_manager(
        env={"XINFD_DISABLE_PLUGIN_AUTOLOAD": "1", "XINFD_PLUGINS": "xinfd_echo.plugin"}
    )
    replica = ReplicaContext(
        model_uid="m",
        model_name="echo",
        engine="echo",
        replica_index=0,
        socket_path="/x",
        python=sys.executable,
    )
    assert worker_main.load_model(plugins, replica, ECHO_SPEC) is not None


async def test_the_replica_reads_no_cap_from_its_environment(start_worker: Any) -> None:
    """An ``XINFERENCE_MAX_TOKENS`` the replica happens to inherit is not read: the daemon applies the operator's
    cap to every request it forwards (settings reach replicas through the context, never the environment)."""
    worker = start_worker(extra_env={"XINFERENCE_MAX_TOKENS": "2"})
    await worker.wait_ready()
    async with (
        worker.session() as session,
        session.post("http://replica/v1/completions", json={"prompt": "a b c d e f g", "max_tokens": 6}) as resp,
    ):
        data = await resp.json()
    assert data["choices"][0]["text"] == "a b c d e f "
    assert (data["choices"][0]["finish_reason"], data["usage"]["completion_tokens"]) == ("length", 6)

