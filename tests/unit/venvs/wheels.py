"""Tiny wheels built on the fly and a PEP 503 index for them: real uv, no network.

Wheels are written with ``zipfile`` (no build backend: milliseconds per wheel). ``wheel_from_installed``
repacks a pure-Python distribution of the test environment (e.g. ``pluggy``) so that the index can also serve
a package the daemon's environment already has: that is what proves skip-installed.

``runtime_wheels`` serves xinfd's own dependencies to a venv on another Python (no network here, and the
machine's wheels of aiohttp & co. are built for the daemon's Python only): repacked with their compiled
modules left out, aiohttp, multidict, yarl, frozenlist and propcache fall back to their pure-Python code.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import functools
import hashlib
import importlib.metadata
import io
import shutil
import socket
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def _record_line(path: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [path, f"sha256={digest}", str(len(data))]


def _write_wheel(out_dir: Path, name: str, version: str, files: dict[str, bytes],
                 requires: Sequence[str]) -> Path:
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    metadata = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    metadata += [f"Requires-Dist: {r}" for r in requires]
    all_files = dict(files)
    all_files[f"{info}/METADATA"] = ("\n".join(metadata) + "\n").encode()
    all_files[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: xinfd-tests\nRoot-Is-Purelib: true\n"
                                  b"Tag: py3-none-any\n")
    rows = [_record_line(p, d) for p, d in all_files.items()] + [[f"{info}/RECORD", "", ""]]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    all_files[f"{info}/RECORD"] = buf.getvalue().encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for p, d in all_files.items():
            zf.writestr(p, d)
    return path


def make_wheel(out_dir: Path, name: str, version: str, *, requires: Sequence[str] = (),
               body: str = "") -> Path:
    """A wheel whose import package ``name`` (dashes as underscores) exposes ``__version__``."""
    module = name.replace("-", "_")
    source = f"__version__ = {version!r}\n{body}"
    return _write_wheel(out_dir, name, version, {f"{module}/__init__.py": source.encode()}, requires)


def wheel_from_installed(out_dir: Path, dist_name: str, *, drop_compiled: bool = False) -> Path:
    """Repack an installed pure-Python distribution (its RECORD files) as a wheel of the same version; with
    ``drop_compiled``, a distribution with optional C speedups becomes its pure-Python self."""
    dist = importlib.metadata.distribution(dist_name)
    files: dict[str, bytes] = {}
    for entry in dist.files or []:
        posix = entry.as_posix()
        skip = posix.startswith("..") or "__pycache__" in posix or posix.endswith(".pyc")
        skip = skip or (drop_compiled and posix.endswith(".so"))
        if skip or ".dist-info/" in posix:
            continue
        files[posix] = Path(str(entry.locate())).read_bytes()
    requires = list(dist.requires or [])
    return _write_wheel(out_dir, dist.metadata["Name"], dist.version, files, requires)


def runtime_wheels(out_dir: Path, python_version: str, root: str = "xinfd") -> list[Path]:
    """Pure-Python wheels of ``root``'s installed dependencies, transitively, as ``python_version`` needs them
    (``root`` itself excluded: xinfd copies its own distribution into such venvs)."""
    environment = {**default_environment(), "python_version": python_version,
                   "python_full_version": f"{python_version}.0", "extra": ""}
    seen: set[str] = set()
    todo = [str(canonicalize_name(r.name)) for r in _requires(root, environment)]
    wheels = []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        wheels.append(wheel_from_installed(out_dir, name, drop_compiled=True))
        todo += [str(canonicalize_name(r.name)) for r in _requires(name, environment)]
    return wheels


def _requires(name: str, environment: dict[str, str]) -> list[Requirement]:
    found = []
    for text in importlib.metadata.requires(name) or []:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            found.append(requirement)
    return found


def make_index(root: Path, wheels: Sequence[Path]) -> str:
    """A PEP 503 simple index under ``root`` (``simple/``, wheels in ``files/``, relative links, so the same
    tree works as ``file://`` and over a loopback HTTP server); returns its ``file://`` URL."""
    simple = root / "simple"
    (root / "files").mkdir(parents=True, exist_ok=True)
    by_name: dict[str, list[Path]] = {}
    for wheel in {w.name: w for w in wheels}.values():
        shutil.copy(wheel, root / "files" / wheel.name)
        by_name.setdefault(str(canonicalize_name(wheel.name.split("-")[0])), []).append(wheel)
    for name, files in by_name.items():
        page = simple / name
        page.mkdir(parents=True, exist_ok=True)
        links = "".join(f'<a href="../../files/{w.name}">{w.name}</a>\n' for w in files)
        (page / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    (simple / "index.html").write_text(
        "<!DOCTYPE html><html><body>\n" + "".join(f'<a href="{n}/">{n}</a>\n' for n in sorted(by_name))
        + "</body></html>\n"
    )
    return simple.resolve().as_uri()


def standard_index(root: Path, extra: Sequence[Path] = ()) -> str:
    """The index the venv tests share: xinfdtestpkg 1.0 (needs pluggy) and 2.0, xinfdtestdep, xinfdtestother
    and a repacked pluggy of the installed version, plus ``extra`` wheels. Returns the ``file://`` URL of
    ``root/simple``."""
    wheels = root / "wheels"
    built = [
        make_wheel(wheels, "xinfdtestpkg", "1.0", requires=["pluggy>=1.0"]),
        make_wheel(wheels, "xinfdtestpkg", "2.0"),
        make_wheel(wheels, "xinfdtestdep", "1.0"),
        make_wheel(wheels, "xinfdtestother", "1.0"),
        wheel_from_installed(wheels, "pluggy"),
        *extra,
    ]
    return make_index(root / "index", built)


class _IndexHandler(SimpleHTTPRequestHandler):
    """Serves an index directory; wheel downloads wait while ``stall`` is set (a slow or hung mirror)."""

    stall: threading.Event

    def do_GET(self) -> None:
        if self.path.endswith(".whl"):
            while self.stall.is_set():
                time.sleep(0.05)
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextlib.contextmanager
def serve_index(index_url: str) -> Iterator[tuple[str, threading.Event]]:
    """Serve a ``make_index`` tree over loopback HTTP; yields (simple URL, stall event)."""
    root = Path(index_url.removeprefix("file://")).parent
    stall = threading.Event()
    handler = type("Handler", (_IndexHandler,), {"stall": stall})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple", stall
    finally:
        stall.clear()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def uv_children(pid: int) -> list[int]:
    """Pids of the uv processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid and cmd and cmd[0].endswith(b"/uv"):
                found.append(int(entry.name))
    return found
