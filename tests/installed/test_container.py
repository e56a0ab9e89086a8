"""The container image, reproduced without a container runtime (none with images runs on these machines) from
the Containerfile's own values: the build stage's context builds the same wheels the installed lane's venv
holds (that venv stands in for the image's /opt/xinfd), the runtime stage's USER runs the daemon, its
ENTRYPOINT is PID 1 of a new PID namespace (``unshare --pid --fork --mount-proc``), its ENV plus ``-e``-style
variables are the whole configuration (no TOML file), XINFERENCE_HOME is a "volume" directory owned by that
user, the HEALTHCHECK command runs for real inside the namespaces (as ``podman healthcheck run`` does) and
``podman stop`` is the STOPSIGNAL to PID 1 with the stop timeout the file documents.

Two things differ from the image, on purpose: the front end binds 127.0.0.1 (tests never listen on every
interface) on a free port instead of 9997, and the image's paths /opt/xinfd and /data are rewritten to the venv
and the volume directory (the host has neither). About 25 s with the lane's venv built."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tests.installed.containerfile import Image, parse
from tests.installed.wheelhouse import REPO, Installed, InstalledDaemon, wait_for, wheel_records

pytestmark = [pytest.mark.installed, pytest.mark.slow]
CONTAINERFILE = REPO / "Containerfile"
# What `podman run -e ...` adds: the echo model at start, and the test's loopback-only front end.
RUN_ENV = {"XINFD_LAUNCH": "echo:2", "XINFD_HOST": "127.0.0.1"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ensure_user(uid: int, gid: int) -> str:
    """The image's USER, created on the host when missing (``useradd``; kept for later runs)."""
    try:
        grp.getgrgid(gid)
    except KeyError:
        subprocess.run(["groupadd", "--system", "--gid", str(gid), "xinfd-container"], check=True, timeout=60)
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--uid", str(uid), "--gid", str(gid), "--no-create-home",
             "--home-dir", "/data", "--shell", "/usr/sbin/nologin", "xinfd-container"],
            check=True, timeout=60,
        )
        return pwd.getpwuid(uid).pw_name


@pytest.fixture
def volume() -> Iterator[Path]:
    """Outside pytest's 0700 temp tree, so the image's user can reach it."""
    path = Path(tempfile.mkdtemp(prefix="xinfd-volume-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _root_and_namespaces() -> None:
    if os.geteuid() != 0:
        pytest.skip("the container reproduction needs root: it creates the image's user and a PID namespace")
    for tool in ("unshare", "setpriv", "nsenter", "useradd"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} (util-linux / passwd) is not installed")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"unshare --pid --fork --mount-proc does not work here: {probe.stderr.decode().strip()}")


class Container:
    """The runtime stage as a process tree: unshare (the runtime) -> setpriv -> ENTRYPOINT as PID 1."""

    def __init__(self, image: Image, installed: Installed, volume: Path, log: Path, run_env: dict[str, str]):
        self.image, self.volume = image, volume
        uid, gid = image.user
        self.paths = {"/opt/xinfd": str(installed.venv), image.volumes[0]: str(volume)}
        home = pwd.getpwuid(uid).pw_dir
        env = {k: self.host_path(v) for k, v in {**image.env, "HOME": home, **run_env}.items()}
        self.env = env
        self.as_user = [shutil.which("setpriv") or "setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups",
                        "--"]
        self.daemon = InstalledDaemon(
            venv=installed.venv, home=volume, cwd=Path(self.host_path(image.workdir)), env=env,
            command=[shutil.which("unshare") or "unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                     *self.as_user, *image.entrypoint],
        )
        self.log = log

    def host_path(self, value: str) -> str:
        for inside, outside in self.paths.items():
            value = ":".join(outside + p[len(inside):] if p == inside or p.startswith(inside + "/") else p
                             for p in value.split(":"))
        return value

    def start(self) -> None:
        self.daemon.start(log_path=self.log)

    def pid1(self) -> int:
        """The host pid of the namespace's PID 1: unshare's only child."""
        assert self.daemon.proc is not None
        runtime = self.daemon.proc.pid
        children = Path(f"/proc/{runtime}/task/{runtime}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def exec(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``podman exec``: the image's user and environment, inside the container's PID and mount namespaces."""
        nsenter = [shutil.which("nsenter") or "nsenter", f"--target={self.pid1()}", "--pid", "--mount"]
        return subprocess.run([*nsenter, *self.as_user, *argv], env=self.env, cwd=self.daemon.cwd,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """The image's HEALTHCHECK command, run for real in the container (its own timeout applies)."""
        return self.exec(*self.image.healthcheck.command, timeout=self.image.healthcheck.timeout)

    def healthy(self) -> bool:
        return self.healthcheck().returncode == 0

    def xinfctl(self, *args: str) -> str:
        done = self.exec("xinfctl", *args)
        assert done.returncode == 0, f"xinfctl {args}: {done.stderr}\n{self.daemon.log()}"
        return done.stdout


def test_container_build_context_makes_the_tested_wheels(installed: Installed, tmp_path: Path) -> None:
    """The build stage's COPY lines carry everything the wheels need, and its RUN builds and installs them the
    way the lane does: the image ships the very files the installed lane tested."""
    image = parse(CONTAINERFILE)
    context = tmp_path / "src"
    for source, dest in image.build_copies:
        target = context / dest / (Path(source).name if dest.endswith("/") else "")
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / source, target)
    run = " ".join(image.build_runs)
    assert "pip wheel --no-cache-dir --no-deps -w /wheels . ./plugins/xinfd-echo" in run
    assert "python -m venv /opt/xinfd" in run and "/opt/xinfd/bin/pip install" in run and "-e " not in run
    assert image.final_copies_from == ["/opt/xinfd"]
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-cache-dir", "--no-deps", "-q", "-w", str(wheels), ".",
         "./plugins/xinfd-echo"],
        cwd=context, check=True, timeout=600,
    )
    for tested in installed.wheels:
        built = wheels / tested.name
        assert built.is_file(), f"the image builds {sorted(p.name for p in wheels.iterdir())}, not {tested.name}"
        assert wheel_records(built) == wheel_records(tested), tested.name


def test_container_runs_as_pid1_non_root_configured_by_env_and_stops_cleanly(
    installed: Installed, volume: Path, tmp_path: Path
) -> None:
    _root_and_namespaces()
    image = parse(CONTAINERFILE)
    _ensure_user(*image.user)
    os.chown(volume, *image.user)
    port = _free_port()
    # -e XINFD_PORT moves the front end and the HEALTHCHECK together (the command reads the same variable).
    container = Container(image, installed, volume, tmp_path / "container.log", {**RUN_ENV, "XINFD_PORT": str(port)})
    assert not Path("/etc/xinfd/xinfd.toml").exists(), "a host config file would leak into the reproduction"
    try:
        container.start()
        pid1 = container.pid1()
        status = {k: v.split() for k, v in (line.split(":", 1) for line in
                                           Path(f"/proc/{pid1}/status").read_text().splitlines())}
        assert status["NSpid"][-1] == "1" and status["Uid"][0] == str(image.user[0]), status
        assert Path(f"/proc/{pid1}/exe").resolve() == (installed.venv / "bin" / "python").resolve()
        # XINFD_LAUNCH=echo:2 from the environment: two replicas come up, the health check passes.
        wait_for(lambda: _replicas_ready(container, "echo") == 2, 120, "echo:2 READY")
        assert container.healthy(), container.daemon.log()
        config = container.xinfctl("config")
        assert "# from: file" not in config and "# from: env XINFD_PORT" in config, config
        assert all(Path(p).stat().st_uid == image.user[0] for p in (volume / "xinfd.sock", volume / "logs"))
        with OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=60) as client:
            answer = client.completions.create(model="echo", prompt="hello from the container")
            assert answer.choices[0].text == "hello from the container"
            _stop_while_streaming(container, client, image)
    finally:
        container.daemon.kill()


def _replicas_ready(container: Container, uid: str) -> int:
    models = json.loads(container.xinfctl("list", "--json"))
    return sum(r["state"] == "READY" for m in models if m["model_uid"] == uid for r in m["replicas"])


def _stop_while_streaming(container: Container, client: OpenAI, image: Image) -> None:
    """``podman stop``: STOPSIGNAL to PID 1; /health (so the HEALTHCHECK) fails at once while the running
    stream finishes, then PID 1 exits 0 within the documented stop timeout."""
    container.xinfctl("launch", "-n", "echo", "-u", "slow-echo", "--delay", "0.1")
    words = [f"w{i}" for i in range(40)]  # 4 s at 0.1 s per token, well inside XINFD_DRAIN_TIMEOUT
    received: list[str] = []
    first = threading.Event()
    failure: list[BaseException] = []

    def stream() -> None:
        try:
            for chunk in client.completions.create(model="slow-echo", prompt=" ".join(words), stream=True):
                received.append(chunk.choices[0].text)
                first.set()
        except BaseException as exc:
            failure.append(exc)
            first.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert first.wait(60) and not failure, failure
    pid1 = container.pid1()
    started = time.monotonic()
    os.kill(pid1, image.stop_signal)
    check = wait_for(lambda: (c := container.healthcheck()).returncode != 0 and c, 10, "HEALTHCHECK failing")
    stream_running = reader.is_alive()
    assert "HTTP Error 503" in check.stderr, check.stderr  # /health says draining, the daemon still serves
    reader.join(60)
    assert not failure, failure
    assert "".join(received) == " ".join(words), "the drain cut the running stream"
    assert stream_running, "the stream ended before the health check saw the drain"
    assert container.daemon.proc is not None
    status = container.daemon.proc.wait(timeout=image.stop_timeout)
    elapsed = time.monotonic() - started
    assert status == 0 and elapsed < image.stop_timeout, (status, elapsed, container.daemon.log())
    # Stopped: the same command, outside the (gone) namespaces, fails too.
    done = subprocess.run([*container.as_user, *image.healthcheck.command], env=container.env,
                          capture_output=True, text=True, timeout=image.healthcheck.timeout, check=False)
    assert done.returncode != 0 and "Connection refused" in done.stderr, done.stderr
    assert "xinfd stopped" in container.daemon.log()
