"""The GPU inventory of a real daemon: NVML by default (no driver here), or declared by XINFD_GPUS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.conftest import Daemon
from tests.integration.test_daemon import launch_echo

TWO_GPUS = "0:NVIDIA A100-SXM4-80GB:81920,1:NVIDIA A100-SXM4-80GB:81920"


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_without_a_driver_the_daemon_starts_and_says_why_there_is_no_gpu(daemon: Daemon) -> None:
    inventory = daemon.xinfctl("gpus").stdout
    engines = daemon.xinfctl("engines").stdout
    try:
        import pynvml  # type: ignore[import-untyped,unused-ignore]

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        has_driver = True
    except Exception:
        has_driver = False
    if has_driver:
        assert "found through NVML" in inventory
        return
    # On this driverless machine: the library's own reason, in the daemon's words.
    assert inventory.startswith("no GPU: no NVML: driver not found (NVML Shared Library Not Found)"), inventory
    assert "replicas run on the CPU" in inventory
    assert engines.splitlines()[-1] == "GPUs: no GPU: no NVML: driver not found (NVML Shared Library Not Found)"
    launch_echo(daemon, replicas=1)  # and it serves on the CPU


def test_two_gpus_declared_by_the_environment_place_three_replicas_two_plus_one(make_daemon: Any) -> None:
    daemon: Daemon = make_daemon(env={"XINFD_GPUS": TWO_GPUS}).start()
    launch_echo(daemon, "--n-gpu", "1", replicas=3)
    data = daemon.xinfctl_json("gpus")
    assert [(g["index"], g["name"], g["memory_mb"]) for g in data] == [
        (0, "NVIDIA A100-SXM4-80GB", 81920),
        (1, "NVIDIA A100-SXM4-80GB", 81920),
    ]
    assert [[r["label"] for r in g["replicas"]] for g in data] == [["echo-r0", "echo-r2"], ["echo-r1"]]
    replicas = daemon.xinfctl_json("list")[0]["replicas"]
    assert sorted(environ(r["pid"])["CUDA_VISIBLE_DEVICES"] for r in replicas) == ["0", "0", "1"]
    human = daemon.xinfctl("gpus").stdout
    assert human.splitlines()[0] == "2 GPU(s) declared in the environment variable XINFD_GPUS"
    assert daemon.xinfctl("engines").stdout.splitlines()[-1] == (
        "GPUs: 2 GPU(s) declared in the environment variable XINFD_GPUS"
    )
    assert "from: env XINFD_GPUS" in daemon.xinfctl("config").stdout


def test_a_bad_gpus_variable_stops_the_daemon_with_one_line(make_daemon: Any) -> None:
    daemon: Daemon = make_daemon(env={"XINFD_GPUS": "0:NVIDIA A100:80GB"})
    result = subprocess.run(
        [sys.executable, "-m", "xinfd.daemon", "--port", "0"],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "xinfd: XINFD_GPUS: device 0 '0:NVIDIA A100:80GB': memory_mb must be an integer > 0 (MiB), got '80GB'\n"
    )
