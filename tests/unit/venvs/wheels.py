"""Tiny wheels built on the fly and a PEP 503 ``file://`` index for them: real uv, no network (issue 3).

Wheels are written with ``zipfile`` (no build backend: milliseconds per wheel). ``wheel_from_installed`` repacks
a pure-Python distribution of the test environment (e.g. ``pluggy``) so that the index can also serve a package
the daemon's environment already has: that is what proves skip-installed.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

from packaging.utils import canonicalize_name


def _record_line(path: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [path, f"sha256={digest}", str(len(data))]


def _write_wheel(out_dir: Path, name: str, version: str, files: dict[str, bytes], requires: Sequence[str]) -> Path:
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    metadata = [f"Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    metadata += [f"Requires-Dist: {r}" for r in requires]
    all_files = dict(files)
    all_files[f"{info}/METADATA"] = ("\n".join(metadata) + "\n").encode()
    all_files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: xinfd-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
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


def make_wheel(out_dir: Path, name: str, version: str, *, requires: Sequence[str] = (), body: str = "") -> Path:
    """A wheel whose import package ``name`` (dashes as underscores) exposes ``__version__``."""
    module = name.replace("-", "_")
    source = f"__version__ = {version!r}\n{body}"
    return _write_wheel(out_dir, name, version, {f"{module}/__init__.py": source.encode()}, requires)


def wheel_from_installed(out_dir: Path, dist_name: str) -> Path:
    """Repack an installed pure-Python distribution (its RECORD files) as a wheel of the same version."""
    dist = importlib.metadata.distribution(dist_name)
    files: dict[str, bytes] = {}
    for entry in dist.files or []:
        posix = entry.as_posix()
        if posix.startswith("..") or "__pycache__" in posix or posix.endswith((".pyc", "RECORD", "INSTALLER",
                                                                                    "REQUESTED", "direct_url.json")):
            continue
        if ".dist-info/" in posix:
            continue
        files[posix] = Path(str(entry.locate())).read_bytes()
    requires = list(dist.requires or [])
    return _write_wheel(out_dir, dist.metadata["Name"], dist.version, files, requires)


def make_index(root: Path, wheels: Sequence[Path]) -> str:
    """A PEP 503 simple index under ``root`` for ``wheels``; returns its ``file://`` URL."""
    simple = root / "simple"
    by_name: dict[str, list[Path]] = {}
    for wheel in wheels:
        by_name.setdefault(str(canonicalize_name(wheel.name.split("-")[0])), []).append(wheel)
    for name, files in by_name.items():
        page = simple / name
        page.mkdir(parents=True, exist_ok=True)
        links = "".join(f'<a href="{w.resolve().as_uri()}">{w.name}</a>\n' for w in files)
        (page / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    (simple / "index.html").write_text(
        "<!DOCTYPE html><html><body>\n" + "".join(f'<a href="{n}/">{n}</a>\n' for n in sorted(by_name))
        + "</body></html>\n"
    )
    return simple.resolve().as_uri()
