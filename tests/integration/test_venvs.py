"""Model venvs end to end: real daemon, real uv, a test index of tiny wheels, real replicas.

The ``pkgver`` engine of ``venv_plugin`` answers with what its replica imports, so each test proves behaviour
by what ends up importable in the venv (or in the replica), not by what the daemon says it did.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Daemon, pid_alive, wait_for
from tests.unit.venvs.wheels import runtime_wheels, serve_index, standard_index, uv_children
from xinfd.venvs.builder import Uv
from xinfd.venvs.python import PythonNotFoundError, find_interpreter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def index_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return standard_index(tmp_path_factory.mktemp("venv-index"))


def venv_daemon(make_daemon: Any, index: str, name: str = "home", **env: str) -> Daemon:
    settings = {"XINFERENCE_ENABLE_VIRTUAL_ENV": "1", "XINFD_PLUGINS": "tests.integration.venv_plugin",
                "XINFD_TEST_VENV_INDEX": index, **env}
    return make_daemon(name, settings)  # type: ignore[no-any-return]


def ask(daemon: Daemon, uid: str) -> dict[str, Any]:
    """What the replica of ``uid`` imports (the pkgver model answers with it)."""
    body = json.dumps({"model": uid, "messages": [{"role": "user", "content": "versions?"}]}).encode()
    request = urllib.request.Request(f"{daemon.endpoint}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        content = json.loads(response.read())["choices"][0]["message"]["content"]
    return json.loads(content)  # type: ignore[no-any-return]


def venv_python_reports(venv: str) -> dict[str, Any]:
    """Run the venv's own interpreter and report what it imports (same code as the replica's model)."""
    code = ("from tests.integration.venv_plugin import imported_versions as f; import json; "
            "print(json.dumps(f()))")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([f"{venv}/bin/python", "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def own_site_packages(venv: str) -> set[str]:
    """Distribution names installed in the venv itself (not seen through the daemon's environment)."""
    sp = next(Path(venv).glob("lib/python*/site-packages"))
    return {p.name.split("-")[0].lower() for p in sp.glob("*.dist-info")}


def test_two_models_pinning_different_versions_run_at_once(make_daemon: Any, index_url: str) -> None:
    daemon = venv_daemon(make_daemon, index_url).start()
    launch_a = daemon.xinfctl("launch", "-n", "pinned-a")
    daemon.xinfctl("launch", "-n", "pinned-b")
    # The progress shows how many packages were installed and how long it took.
    assert "installed 1 package(s) in" in launch_a.stderr
    a, b = ask(daemon, "pinned-a"), ask(daemon, "pinned-b")
    assert a["xinfdtestpkg"][0] == "1.0" and b["xinfdtestpkg"][0] == "2.0"
    assert a["sys.prefix"] != b["sys.prefix"]
    assert a["xinfdtestpkg"][1].startswith(a["sys.prefix"])
    assert b["xinfdtestpkg"][1].startswith(b["sys.prefix"])
    venvs = {v["model_name"]: v for v in daemon.xinfctl_json("venv", "list")}
    assert venvs["pinned-a"]["in_use_by"] == ["pinned-a"] and venvs["pinned-b"]["in_use_by"] == ["pinned-b"]
    assert venvs["pinned-a"]["path"] == a["sys.prefix"]
    home_v4 = daemon.home / "virtualenv" / "v4"
    assert Path(a["sys.prefix"]).parent == home_v4 / "pinned-a" / "pkgver"
    # The documented path {model}/{engine}/{python_version} is the newest published venv.
    documented = home_v4 / "pinned-a" / "pkgver" / venvs["pinned-a"]["python_version"]
    assert documented.resolve() == Path(a["sys.prefix"])

    refused = daemon.xinfctl("venv", "remove", "pinned-a", check=False)
    assert refused.returncode == 1 and "in use" in refused.stderr
    daemon.xinfctl("venv", "gc")
    assert Path(a["sys.prefix"]).is_dir() and Path(b["sys.prefix"]).is_dir()

    # A relaunch reuses the published venv; --disable-virtual-env runs in xinfd's own environment.
    daemon.xinfctl("terminate", "pinned-a")
    relaunch = daemon.xinfctl("launch", "-n", "pinned-a", "-u", "again")
    assert "reusing venv" in relaunch.stderr and "building venv" not in relaunch.stderr
    daemon.xinfctl("launch", "-n", "pinned-b", "-u", "plain", "--disable-virtual-env")
    plain = ask(daemon, "plain")
    assert plain["xinfdtestpkg"] is None and plain["sys.prefix"] == sys.prefix

    daemon.xinfctl("terminate", "again")
    daemon.xinfctl("terminate", "pinned-b")
    removed = daemon.xinfctl_json("venv", "gc")["removed"]
    assert a["sys.prefix"] in removed and b["sys.prefix"] in removed
    assert not Path(a["sys.prefix"]).exists()


def test_spec_semantics_are_what_the_venv_imports(make_daemon: Any, index_url: str) -> None:
    daemon = venv_daemon(make_daemon, index_url).start()
    venv = daemon.xinfctl_json("venv", "create", "-n", "markers")
    seen = venv_python_reports(venv["path"])
    # #pkgver_dependencies# expanded through the plugin hook; markers with #engine#/#model_engine# and
    # sys_platform applied; #system_pluggy# satisfied by xinfd's environment, so not installed again.
    assert seen["xinfdtestdep"][0] == "1.0"
    assert seen["xinfdtestpkg"][0] == "2.0"
    assert seen["xinfdtestother"] is None
    assert "pluggy" not in own_site_packages(venv["path"]) and seen["pluggy"] is not None
    # -vp replaces the entry of the same name, in a new venv beside the first one.
    replaced = daemon.xinfctl_json("venv", "create", "-n", "markers", "-vp", "xinfdtestpkg==1.0")
    assert replaced["path"] != venv["path"]
    assert venv_python_reports(replaced["path"])["xinfdtestpkg"][0] == "1.0"
    assert venv_python_reports(venv["path"])["xinfdtestpkg"][0] == "2.0"
    assert len(daemon.xinfctl_json("venv", "list", "--model", "markers")) == 2
    human = daemon.xinfctl("venv", "list").stdout.splitlines()
    assert human[0].split()[:3] == ["MODEL", "ENGINE", "PYTHON"] and len(human) == 3

    bad = daemon.xinfctl("venv", "create", "-n", "bad-placeholder", check=False)
    assert bad.returncode == 2 and "#nosuch_dependencies#" in bad.stderr
    option = daemon.xinfctl("launch", "-n", "pinned-a", "-vp=--index-url=http://x", check=False)
    assert option.returncode == 2 and "option" in option.stderr

    daemon.xinfctl("venv", "remove", "markers", "--python", venv["python_version"])
    assert not Path(venv["path"]).exists() and not Path(replaced["path"]).exists()


def test_skip_installed_on_and_off(make_daemon: Any, index_url: str) -> None:
    # xinfdtestpkg 1.0 requires pluggy, which xinfd's environment has: skipped with 1, installed with 0.
    on = venv_daemon(make_daemon, index_url, "on").start()
    off = venv_daemon(make_daemon, index_url, "off", XINFERENCE_VIRTUAL_ENV_SKIP_INSTALLED="0").start()
    with_skip = on.xinfctl_json("venv", "create", "-n", "pinned-a")
    without = off.xinfctl_json("venv", "create", "-n", "pinned-a")
    assert own_site_packages(with_skip["path"]) == {"xinfdtestpkg"}
    assert own_site_packages(without["path"]) == {"xinfdtestpkg", "pluggy"}
    assert venv_python_reports(without["path"])["pluggy"][1].startswith(without["path"])


def test_global_toggle_off_and_enable_per_launch(make_daemon: Any, index_url: str) -> None:
    daemon = venv_daemon(make_daemon, index_url, XINFERENCE_ENABLE_VIRTUAL_ENV="0").start()
    daemon.xinfctl("launch", "-n", "pinned-a", "-u", "off")
    daemon.xinfctl("launch", "-n", "pinned-a", "-u", "on", "--enable-virtual-env")
    assert ask(daemon, "off")["xinfdtestpkg"] is None
    assert ask(daemon, "on")["xinfdtestpkg"][0] == "1.0"


@pytest.fixture
def slow_index(index_url: str) -> Iterator[tuple[str, threading.Event]]:
    with serve_index(index_url) as served:
        yield served


def test_sigkill_mid_build_then_restart_rebuilds_cleanly(
    make_daemon: Any, slow_index: tuple[str, threading.Event]
) -> None:
    url, stall = slow_index
    stall.set()
    daemon = venv_daemon(make_daemon, url).start()
    launch = subprocess.Popen([sys.executable, "-m", "xinfd.cli", "launch", "-n", "pinned-a"], env=daemon.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    group = daemon.home / "virtualenv" / "v4" / "pinned-a" / "pkgver"
    assert daemon.proc is not None
    uv = wait_for(lambda: uv_children(daemon.proc.pid) if list(group.glob(".build-*")) else None, timeout=30)
    daemon.stop(signal.SIGKILL)
    launch.wait(timeout=30)
    wait_for(lambda: not any(pid_alive(p) for p in uv), timeout=10)  # PDEATHSIG: no uv left writing
    leftovers = list(group.glob(".build-*"))
    assert leftovers and not [p for p in group.iterdir() if not p.name.startswith(".")]

    stall.clear()
    daemon.start()
    assert not any(p.exists() for p in leftovers)  # removed at start, before anything launches
    assert "removed venv leftover" in daemon.log()
    # The interrupted launch may be restored from the desired state; otherwise launch it again.
    if not any(m["model_uid"] == "pinned-a" for m in daemon.xinfctl_json("list")):
        daemon.xinfctl("launch", "-n", "pinned-a")
    wait_for(lambda: [m for m in daemon.xinfctl_json("list") if m["state"] == "READY"], timeout=60)
    assert ask(daemon, "pinned-a")["xinfdtestpkg"][0] == "1.0"


def other_python() -> str | None:
    """A Python here whose minor version differs from the daemon's (found the way xinfd finds it)."""
    own = ".".join(platform.python_version_tuple()[:2])
    for version in ("3.12", "3.13", "3.11"):
        if version == own:
            continue
        try:
            asyncio.run(find_interpreter(Uv(), version))
        except PythonNotFoundError:
            continue
        return version
    return None


@pytest.fixture(scope="module")
def runtime_index_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The standard index plus xinfd's dependencies (pure-Python builds) for a venv on another Python."""
    root = tmp_path_factory.mktemp("venv-runtime-index")
    version = other_python() or "3.12"
    return standard_index(root, runtime_wheels(root / "runtime", version))


def test_launch_on_another_python(make_daemon: Any, runtime_index_url: str) -> None:
    other = other_python()
    if other is None:
        pytest.skip(f"no Python 3.11-3.13 besides the daemon's {platform.python_version()} on this machine")
    daemon = venv_daemon(make_daemon, runtime_index_url).start()
    launch = daemon.xinfctl("launch", "-n", "pinned-b", "-u", "other", "--python", other)
    assert f"Python {other}." in launch.stderr and "copying xinfd==" in launch.stderr
    daemon.xinfctl("launch", "-n", "pinned-b", "-u", "own")
    there, here = ask(daemon, "other"), ask(daemon, "own")
    assert there["python"].startswith(other + ".") and here["python"] == platform.python_version()
    assert there["xinfdtestpkg"][0] == "2.0" and there["xinfdtestpkg"][1].startswith(there["sys.prefix"])
    # The worker's own dependencies are the venv's copies; the daemon's are built for the daemon's Python.
    assert there["aiohttp"][1].startswith(there["sys.prefix"])
    assert not here["aiohttp"][1].startswith(here["sys.prefix"])
    assert {"xinfd", "aiohttp", "xinfdtestpkg"} <= own_site_packages(there["sys.prefix"])

    rows = {r["python_version"]: r for r in daemon.xinfctl_json("venv", "list", "--model", "pinned-b")}
    assert sorted(rows) == sorted([there["python"], here["python"]])
    assert rows[there["python"]]["path"] == there["sys.prefix"]
    assert rows[there["python"]]["python"].endswith(f"python{other}")
    assert [b.split("==")[0] for b in rows[there["python"]]["bundled"]] == ["xinfd"]
    group = daemon.home / "virtualenv" / "v4" / "pinned-b" / "pkgver"
    assert (group / there["python"]).resolve() == Path(there["sys.prefix"])  # the documented path
    human = daemon.xinfctl("venv", "list").stdout
    assert there["python"] in human and here["python"] in human

    # An engine from an installed plugin distribution (xinfd-echo, found by its entry point) is copied in.
    daemon.xinfctl("launch", "-n", "echo-venv", "--python", other)
    body = json.dumps({"model": "echo-venv", "messages": [{"role": "user", "content": "hello there"}]})
    request = urllib.request.Request(f"{daemon.endpoint}/v1/chat/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert "hello there" in json.loads(response.read())["choices"][0]["message"]["content"]
    echo = next(r for r in daemon.xinfctl_json("venv", "list", "--model", "echo-venv"))
    assert {"xinfd", "xinfd_echo", "xinfdtestpkg"} <= own_site_packages(echo["path"])
    assert echo["python_version"] == there["python"] and echo["in_use_by"] == ["echo-venv"]

    # Not on this machine, not a version, or no venv to put it in: one line, exit 2 (HTTP 400).
    for args, reason in ((["--python", "3.99"], "Python 3.99 is not installed on this machine"),
                         (["--python", "python3"], "python must be a version like 3.12"),
                         (["--python", other, "--disable-virtual-env"], "python needs a model venv")):
        refused = daemon.xinfctl("launch", "-n", "pinned-a", "-u", "refused", *args, check=False)
        assert refused.returncode == 2 and reason in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    missing = daemon.xinfctl("venv", "create", "-n", "pinned-a", "--python", "3.99", check=False)
    assert missing.returncode == 2 and "3.99" in missing.stderr
    assert "refused" not in {m["model_uid"] for m in daemon.xinfctl_json("list")}

    # venv create --python builds ahead; remove --python removes only that version's venvs.
    ahead = daemon.xinfctl_json("venv", "create", "-n", "pinned-b", "-vp", "xinfdtestpkg==1.0",
                                "--python", other)
    assert ahead["python_version"] == there["python"] and ahead["path"] != there["sys.prefix"]
    daemon.xinfctl("terminate", "other")
    removed = daemon.xinfctl_json("venv", "remove", "pinned-b", "--python", other)["removed"]
    assert sorted(removed) == sorted([there["sys.prefix"], ahead["path"]])
    assert Path(here["sys.prefix"]).is_dir() and Path(echo["path"]).is_dir()
    assert [r["python_version"] for r in daemon.xinfctl_json("venv", "list", "--model", "pinned-b")] == [
        here["python"]]


def control_request(daemon: Daemon, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    """One request to the control socket, as any HTTP client would send it (status, JSON answer)."""
    import http.client
    import socket

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(60)
            self.sock.connect(str(daemon.socket))

    conn = UnixConnection("localhost")
    try:
        conn.request(method, path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


ADMIN_KEY = "venv-test-admin-key"


def http_error(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_KEY}"}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("entry", ["foo==", "foo>=1; python_version >>", "evil @ file:///tmp/evil", "--index-url=x"])
def test_a_refused_virtual_env_packages_entry_names_the_field(
    make_daemon: Any, index_url: str, entry: str
) -> None:
    daemon = venv_daemon(make_daemon, index_url, XINFD_ADMIN_API_KEYS=ADMIN_KEY).start()
    status, answer = http_error(f"{daemon.endpoint}/v1/models",  # Xinference's REST API
                                {"model_name": "pinned-a", "model_type": "LLM", "virtual_env_packages": [entry]})
    assert status == 400 and answer["error"]["param"] == "virtual_env_packages", answer
    body = {"model_name": "pinned-a", "virtual_env_packages": [entry]}
    for path in ("/v1/models", "/v1/venvs"):  # launch and venv create: control socket and its HTTP mount
        status, answer = control_request(daemon, "POST", path, body)
        assert status == 400 and answer["error"]["param"] == "virtual_env_packages", (path, answer)
        status, answer = http_error(f"{daemon.endpoint}/control{path}", body)
        assert status == 400 and answer["error"]["param"] == "virtual_env_packages", (path, answer)
    assert daemon.xinfctl_json("list") == []


def test_an_unknown_placeholder_in_virtual_env_packages_names_the_field(make_daemon: Any, index_url: str) -> None:
    daemon = venv_daemon(make_daemon, index_url).start()
    status, answer = control_request(daemon, "POST", "/v1/venvs",
                                     {"model_name": "pinned-a", "virtual_env_packages": ["#nosuch_dependencies#"]})
    assert status == 400 and answer["error"]["param"] == "virtual_env_packages", answer


def test_venv_list_verify_names_a_file_changed_in_place(make_daemon: Any, index_url: str) -> None:
    daemon = venv_daemon(make_daemon, index_url).start()
    venv = daemon.xinfctl_json("venv", "create", "-n", "pinned-a")["path"]
    clean = daemon.xinfctl("venv", "list", "--verify")
    assert "every installed file matches its RECORD" in clean.stderr
    init = next(Path(venv).glob("lib/python*/site-packages/xinfdtestpkg/__init__.py"))
    st = init.stat()
    data = init.read_bytes()
    init.write_bytes(data[:-1] + bytes([data[-1] ^ 0x20]))  # one byte flipped, same size and mtime
    os.utime(init, ns=(st.st_atime_ns, st.st_mtime_ns))
    damaged = daemon.xinfctl("venv", "list", "--verify", check=False)
    assert damaged.returncode == 1, damaged.stderr
    assert f"{venv}: 1 damaged file(s)" in damaged.stdout
    assert "xinfdtestpkg-1.0: xinfdtestpkg/__init__.py (content differs from RECORD)" in damaged.stdout
    rows = json.loads(daemon.xinfctl("venv", "list", "--verify", "--json", check=False).stdout)
    assert [r["damaged"] for r in rows] == [
        ["xinfdtestpkg-1.0: xinfdtestpkg/__init__.py (content differs from RECORD)"]]
    assert daemon.xinfctl("venv", "list").returncode == 0  # the plain list does not hash
