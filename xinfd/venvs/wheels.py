"""Wheels that must be built from source with engine-declared settings, built once and kept.

llama-cpp-python has no wheel on PyPI, and its default build compiles for the build machine's own CPU
(``GGML_NATIVE=ON``): on a VM that refuses some of those instructions (AMX) the result dies with SIGILL, and
an image built on one machine breaks on another. The engine therefore declares how its package must be built
(``Engine.build_env``: ``CMAKE_ARGS="-DGGML_NATIVE=OFF"``), and this cache builds it that way, once per
(distribution, version, Python, build settings), for every venv and every later daemon.

Why not uv's own cache: uv keys a built wheel by the source archive, not by the environment variables the
build read, so a native build cached earlier would be reused for a portable request (and vice versa); pip's
wheel cache has the same blind spot. We build with ``pip wheel --no-binary NAME --no-cache-dir`` inside a
throwaway venv where uv installs pip (so a daemon venv without pip works too), and publish the wheel into a
directory named after everything that decides its content. A file lock per key makes concurrent launches
(and concurrent daemons sharing ``XINFD_WHEEL_CACHE``) wait for one build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from xinfd.events import Publish, VenvProgress
from xinfd.venvs.cache import FileLock, write_json_atomic
from xinfd.venvs.spec import IndexOptions, VenvError

# packaging is imported in the functions that use it: the daemon imports this module at start and needs
# packaging only once it builds a venv (idle memory, tests/unit/test_daemon_imports.py).

log = logging.getLogger(__name__)

Runner = Callable[..., Awaitable[str]]
BUILD_INFO = "xinfd-build.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceBuild:
    """One distribution to build from source: ``name==version`` for ``python_version``, with ``env`` set."""

    name: str
    version: str
    python_version: str
    env: Mapping[str, str]

    @property
    def key(self) -> str:
        """Directory name: readable prefix plus a digest of the build settings (a change means a new build)."""
        from packaging.utils import canonicalize_name

        major_minor = "".join(self.python_version.split(".")[:2])
        settings = hashlib.sha256(json.dumps(sorted(self.env.items())).encode()).hexdigest()[:12]
        return f"{canonicalize_name(self.name)}-{self.version}-py{major_minor}-{settings}"

    def describe(self) -> str:
        flags = " ".join(f"{k}={v!r}" for k, v in sorted(self.env.items()))
        return f"{self.name} {self.version} from source ({flags or 'default build settings'})"


class WheelCache:
    """``root/<name>-<version>-py<XY>-<settings digest>/<wheel>`` plus a ``xinfd-build.json`` record."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def cached(self, build: SourceBuild) -> Path | None:
        """The published wheel for ``build``, or None."""
        folder = self.root / build.key
        wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
        return wheels[0] if wheels else None

    async def ensure(
        self,
        build: SourceBuild,
        *,
        python: str,
        index: IndexOptions,
        uv_run: Runner,
        run: Runner,
        publish: Publish,
    ) -> Path:
        """The wheel of ``build``: from the cache, or built now under the key's lock (others wait for it).

        ``uv_run(args)`` runs uv, ``run(argv, env=...)`` any other program; both log, stream progress, obey
        the caller's deadline and raise ``VenvError`` on failure (``xinfd.venvs.builder``).
        """
        if (wheel := self.cached(build)) is not None:
            await publish(VenvProgress(message=f"using cached wheel {wheel.name} ({build.describe()})"))
            return wheel
        lock = FileLock(self.root / f".{build.key}.lock")
        if not lock.try_acquire():
            await publish(VenvProgress(message=f"waiting for another build of {build.describe()}"))
            await lock.acquire()
        try:
            if (wheel := self.cached(build)) is not None:
                return wheel
            return await self._build(build, python=python, index=index, uv_run=uv_run, run=run, publish=publish)
        finally:
            lock.release()

    async def _build(self, build: SourceBuild, *, python: str, index: IndexOptions, uv_run: Runner, run: Runner,
                     publish: Publish) -> Path:
        work = self.root / f".build-{build.key}-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        started = time.monotonic()
        await publish(VenvProgress(message=f"building {build.describe()}; this can take minutes, "
                                   f"once (cached in {self.root})"))
        try:
            builder = work / "builder"
            await uv_run(["venv", "--python", python, "--quiet", str(builder)])
            # pip comes from the model's own indexes (a mirror, a local folder), like everything else.
            await uv_run(["pip", "install", "--python", str(builder / "bin" / "python"), "--quiet", "pip",
                          *index.uv_args()])
            out = work / "out"
            env = {**os.environ, **build.env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
            env.pop("VIRTUAL_ENV", None)
            await run([str(builder / "bin" / "python"), "-m", "pip", "wheel", "--no-deps", "--no-cache-dir",
                       "--no-binary", build.name, "--wheel-dir", str(out), *index.pip_args(),
                       f"{build.name}=={build.version}"], env=env)
            wheels = sorted(out.glob("*.whl"))
            if len(wheels) != 1:
                raise VenvError(f"building {build.name} {build.version} produced {len(wheels)} wheels, expected 1")
            from packaging.utils import canonicalize_name, parse_wheel_filename

            name, version, _, _ = parse_wheel_filename(wheels[0].name)
            if name != canonicalize_name(build.name) or str(version) != build.version:
                raise VenvError(f"building {build.name}=={build.version} produced {wheels[0].name}")
            final = self.root / build.key
            staged = work / build.key
            staged.mkdir()
            os.replace(wheels[0], staged / wheels[0].name)
            seconds = round(time.monotonic() - started, 1)
            write_json_atomic(staged / BUILD_INFO, {
                "name": build.name, "version": build.version, "python_version": build.python_version,
                "env": dict(build.env), "wheel": wheels[0].name, "build_seconds": seconds, "created": time.time(),
            })
            shutil.rmtree(final, ignore_errors=True)  # an unpublished leftover (no wheel inside)
            os.rename(staged, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        await publish(VenvProgress(message=f"built {build.name} {build.version} in {seconds:.0f}s"))
        log.info("built %s in %.1fs into %s", build.describe(), seconds, final)
        return final / wheels[0].name

    def clean_leftovers(self) -> list[Path]:
        """Build directories a crashed daemon left (their lock is free again); called at start."""
        removed: list[Path] = []
        for work in self.root.glob(".build-*"):
            key = work.name.removeprefix(".build-").rsplit("-", 1)[0]
            lock = FileLock(self.root / f".{key}.lock")
            if lock.try_acquire():
                try:
                    shutil.rmtree(work, ignore_errors=True)
                    removed.append(work)
                finally:
                    lock.release()
        return removed


def source_builds_for(
    wanted: Mapping[str, str], declared: Mapping[str, Mapping[str, str]], python_version: str
) -> list[SourceBuild]:
    """The resolved ``wanted`` pins (name -> version) that an engine declared must be built from source."""
    from packaging.utils import canonicalize_name

    by_name = {str(canonicalize_name(n)): env for n, env in declared.items()}
    return [
        SourceBuild(name=name, version=version, python_version=python_version, env=dict(by_name[name]))
        for name, version in sorted(wanted.items())
        if name in by_name and _is_plain_version(version)
    ]


def _is_plain_version(pin: str) -> bool:
    """A direct URL or path pin is installed as given; only index versions are built here."""
    return bool(pin) and not any(c in pin for c in "@/ ")


def declared_build_env(items: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> dict[str, dict[str, str]]:
    """``VenvSpec.source_builds`` (hashable tuples) back into a mapping."""
    return {name: dict(env) for name, env in items}
