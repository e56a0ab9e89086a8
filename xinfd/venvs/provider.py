"""``VenvProvider``: the ``EnvironmentProvider`` that gives each model its venv.

It decides whether a launch uses a venv (global toggle, per-launch override, non-empty package list), makes
sure the spec's venv is published (building it under its lock if not), records which models use which venv
(remove and gc refuse those), and hands the replicas the venv's interpreter and ``LD_LIBRARY_PATH``.
Concurrent launches of one spec wait for a single build: an in-process lock per digest, plus the digest's file
lock for anything else building into the same home.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import logging
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from xinfd.environments import EnvironmentOptions, EnvironmentRequest, ReplicaEnvironment, SystemEnvironment
from xinfd.events import Publish, VenvProgress, discard
from xinfd.plugins import Plugins
from xinfd.types import ModelSpec
from xinfd.venvs import bundle, cache
from xinfd.venvs.builder import DEFAULT_STALL_TIMEOUT, BuildLog, Uv, build
from xinfd.venvs.pipconfig import PipConfig
from xinfd.venvs.python import Interpreter, check_python_request, find_interpreter, version_matches
from xinfd.venvs.reach import usable_indexes
from xinfd.venvs.spec import (
    VenvError,
    VenvInUseError,
    VenvSpec,
    VenvSpecError,
    check_name,
    expand_packages,
    index_options,
)
from xinfd.venvs.wheels import WheelCache

log = logging.getLogger(__name__)

# uv's name for pip's behaviour: every index is asked, the best matching version wins.
PIP_INDEX_STRATEGY = "unsafe-best-match"
PROBE_TIMEOUT_S = 10.0
_VERSION_FILTER_RE = re.compile(r"^\d{1,2}(?:\.\d{1,3}){0,2}$")


def system_version(name: str) -> str | None:
    """Version of ``name`` in xinfd's own environment (``#system_<name>#``)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def marker_environment(python_version: str) -> dict[str, str]:
    """PEP 508 marker values for the target interpreter (this host; the chosen Python's version)."""
    from packaging.markers import default_environment

    env: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
    env["python_full_version"] = python_version
    env["python_version"] = ".".join(python_version.split(".")[:2])
    return env


class VenvProvider:
    """Model venvs under ``$XINFERENCE_HOME/virtualenv/v4`` (layout: ``xinfd.venvs.cache``)."""

    def __init__(
        self,
        *,
        home: Path,
        plugins: Plugins,
        enabled: bool,
        skip_installed: bool,
        build_timeout: float = 1800.0,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        uv: Uv | None = None,
        pip_config: PipConfig | None = None,
        python: str | None = None,
        wheel_cache: Path | None = None,
    ) -> None:
        self.home = home
        # Source-built wheels (llama-cpp-python) outlive venvs: kept apart, shareable between homes.
        self.wheels = WheelCache(wheel_cache or home / "cache" / "wheels")
        self.plugins = plugins
        self.enabled = enabled
        self.skip_installed = skip_installed
        self.build_timeout = build_timeout
        self.stall_timeout = stall_timeout
        self._uv = uv
        self._pip_config = pip_config or PipConfig()
        self.python = python or sys.executable
        self.python_version = platform.python_version()
        self._locks: dict[str, asyncio.Lock] = {}
        # venv path -> uids of the models whose replicas run from it.
        self.in_use: dict[str, set[str]] = {}
        self._by_model: dict[str, str] = {}
        # Metrics hook: called with (seconds, ok) after every build; the daemon sets it (venv build histogram).
        self.on_build: Callable[[float, bool], None] | None = None
        self._system = SystemEnvironment()
        self._interpreters: dict[str, Interpreter] = {}

    @property
    def uv(self) -> Uv:
        if self._uv is None:
            self._uv = Uv(cache_dir=self.home / "cache" / "uv", stall_timeout=self.stall_timeout)
        return self._uv

    def startup_cleanup(self) -> list[Path]:
        """Remove what a crash left (build and trash dirs whose lock is free); called once at daemon start."""
        removed = cache.clean_leftovers(self.home) + self.wheels.clean_leftovers()
        for path in removed:
            log.info("removed venv leftover %s", path)
        return removed

    # ---- the spec ----------------------------------------------------------------------------------------

    def make_spec(self, model: ModelSpec, engine: str, overrides: Sequence[str] = (),
                  interpreter: Interpreter | None = None) -> VenvSpec:
        """The venv spec of ``model`` served by ``engine`` on ``interpreter`` (default: the daemon's); raises
        ``VenvSpecError`` naming the bad entry."""
        check_name(model.name, "model name")
        check_name(engine, "engine name")
        # The daemon's own installation (whatever --python named it) shares its site-packages, hence its spec.
        own = interpreter is not None and not interpreter.shares_daemon_env
        python, python_version = (interpreter.path, interpreter.version) if own and interpreter else (
            self.python, self.python_version)
        bundled = bundle.worker_distributions(self.plugins, engine) if own else ()
        bundle.check_python_supported(bundled, python_version)
        block: Mapping[str, Any] = model.virtualenv or {}
        packages = block.get("packages") or []
        if not isinstance(packages, list | tuple) or not all(isinstance(p, str) for p in packages):
            raise VenvSpecError(f"model {model.name!r}: virtualenv.packages must be a list of strings")
        requirements = expand_packages(
            packages,
            engine=engine,
            engines=sorted(self.plugins.engines),
            dependencies=self.plugins.dependencies,
            system_version=system_version,
            environment=marker_environment(python_version),
            overrides=overrides,
            overrides_param="virtual_env_packages",
        )
        return VenvSpec(
            model_name=model.name,
            engine=engine,
            python_version=python_version,
            python=python,
            requirements=requirements,
            index=index_options(block),
            inherit_pip_config=bool(block.get("inherit_pip_config", True)),
            skip_installed=self.skip_installed,
            bundled=bundled,
            source_builds=tuple(
                (name, tuple(sorted(env.items()))) for name, env in sorted(self.plugins.build_env(engine).items())
            ),
        )

    async def resolve_python(self, request: str | None) -> Interpreter | None:
        """The interpreter a launch asked for (``--python``), found on this machine; None for the daemon's.

        Found interpreters are remembered (a cached relaunch stays fast); a vanished one is looked up again.
        """
        if request is None:
            return None
        request = check_python_request(request)
        known = self._interpreters.get(request)
        if known is not None and os.access(known.path, os.X_OK):
            return known
        found = await find_interpreter(self.uv, request)
        if not found.shares_daemon_env:  # e.g. 3.10: xinfd's worker cannot run there, say so before a build
            bundle.check_python_supported([bundle.CORE_DISTRIBUTION], found.version)
        self._interpreters[request] = found
        return found

    async def check_launch(self, request: EnvironmentOptions) -> None:
        """Refuse, before a launch starts, a ``python`` the launch cannot honour (a 400 with one line)."""
        if request.python is None:
            return
        if not self._wants_venv(request):
            raise VenvSpecError("python needs a model venv, but venvs are disabled for this launch "
                                "(--disable-virtual-env or XINFERENCE_ENABLE_VIRTUAL_ENV=0 without "
                                "--enable-virtual-env)", param="python")
        await self.resolve_python(request.python)

    def _wants_venv(self, request: EnvironmentOptions) -> bool:
        return self.enabled if request.enable_virtual_env is None else request.enable_virtual_env

    # ---- EnvironmentProvider -----------------------------------------------------------------------------

    async def prepare(self, request: EnvironmentRequest, publish: Publish) -> ReplicaEnvironment:
        options = request.options
        await self.check_launch(options)
        if not self._wants_venv(options):
            return await self._system.prepare(request, publish)
        interpreter = await self.resolve_python(options.python)
        spec = self.make_spec(request.spec, request.engine, options.virtual_env_packages, interpreter)
        # Another interpreter always needs a venv (its own xinfd), even with no model packages.
        if not spec.requirements and not spec.own_copies:
            await publish(VenvProgress(message="no virtualenv packages for this model and engine; "
                                       "replicas use xinfd's environment"))
            return await self._system.prepare(request, publish)
        venv = await self.ensure(spec, publish, on_ready=lambda path: self._use(request.model_uid, path))
        return self.environment(venv)

    def release(self, model_uid: str) -> None:
        path = self._by_model.pop(model_uid, None)
        if path is not None:
            users = self.in_use.get(path, set())
            users.discard(model_uid)
            if not users:
                self.in_use.pop(path, None)

    def _use(self, uid: str, path: Path) -> None:
        self._by_model[uid] = str(path)
        self.in_use.setdefault(str(path), set()).add(uid)

    def environment(self, venv: Path) -> ReplicaEnvironment:
        """The replicas' interpreter and variables; ``LD_LIBRARY_PATH`` gains the venv's ``nvidia/*/lib`` (the
        spec's cuDNN note, done for the user)."""
        env = {"VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
        libs = sorted(str(p) for p in cache.site_packages(venv).glob("nvidia/*/lib") if p.is_dir())
        if libs:
            inherited = os.environ.get("LD_LIBRARY_PATH")
            env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, inherited] if inherited else libs)
        return ReplicaEnvironment(python=str(venv / "bin" / "python"), env=env, venv_path=str(venv))

    # ---- build or reuse ----------------------------------------------------------------------------------

    async def ensure(self, spec: VenvSpec, publish: Publish = discard,
                     on_ready: Callable[[Path], None] | None = None) -> Path:
        """The published venv of ``spec``: reused when intact, else built once (the others wait for it)."""
        paths = cache.paths_for(self.home, spec)
        lock = self._locks.setdefault(paths.name + str(paths.group), asyncio.Lock())
        async with lock:
            started = time.monotonic()
            problem = self._problem(paths)
            if problem is None:
                cache.touch(paths.published)
                if on_ready is not None:
                    on_ready(paths.published)
                await publish(VenvProgress(message=f"reusing venv {paths.published} "
                                           f"({(time.monotonic() - started) * 1000:.0f} ms)"))
                return paths.published
            file_lock = cache.FileLock(paths.lock)
            if not file_lock.try_acquire():
                await publish(VenvProgress(message=f"waiting for another build of {paths.published}"))
                await file_lock.acquire()
            try:
                # Re-check under the file lock: another process may have published it meanwhile.
                problem = self._problem(paths)
                if problem is not None and paths.published.exists():
                    if paths.published.is_dir() and str(paths.published) in self.in_use:
                        raise VenvError(f"venv {paths.published} is damaged ({problem}) and in use by "
                                        f"{', '.join(sorted(self.in_use[str(paths.published)]))}; terminate "
                                        f"them, then launch again to rebuild it")
                    await publish(VenvProgress(message=f"venv is damaged ({problem}); rebuilding"))
                    log.warning("venv %s is damaged (%s); rebuilding", paths.published, problem)
                    cache.remove_tree(paths.published)
                if problem is not None:
                    await self._build(spec, paths, publish)
                cache.set_current(paths)
                cache.touch(paths.published)
                if on_ready is not None:
                    on_ready(paths.published)
            finally:
                file_lock.release()
            return paths.published

    @staticmethod
    def _problem(paths: cache.VenvPaths) -> str | None:
        return cache.verify(paths.published, paths.digest) if paths.published.exists() else "absent"

    async def _build(self, spec: VenvSpec, paths: cache.VenvPaths, publish: Publish) -> None:
        # Leftovers of this digest (a crash mid-build) are stale: we hold its lock.
        for stale in paths.group.glob(f".build-{paths.name}-*"):
            await asyncio.to_thread(cache.remove_tree, stale)
        index = spec.index
        if spec.inherit_pip_config:
            # pip merges all its indexes and takes the best version among them; uv's default stops at the
            # first index that has the name at all. Inheriting pip's config means pip's semantics, unless the
            # model's block chose a strategy (README "Model venvs").
            index = index.merged(await self._pip_config.options())
            if spec.index.index_strategy is None:
                index = dataclasses.replace(index, index_strategy=PIP_INDEX_STRATEGY)
        target = paths.build_dir()
        log_dir = self.home / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        build_log = BuildLog(log_dir / f"venv-{spec.model_name}-{spec.engine}-{paths.name}.log")
        build_log.path.write_text("")
        await publish(VenvProgress(message=f"building venv {paths.published} "
                                   f"({len(spec.requirements)} requirement(s), log {build_log.path})"))
        started = time.monotonic()
        info = self.plugins.engines.get(spec.engine)
        probes = [info.probe_module] if info is not None and info.probe_module else []
        try:
            # The indexes are checked alongside the build, not before it (xinfd.venvs.reach.first_index_use).
            meta = await build(spec, target, uv=self.uv, index=index, probe_modules=probes, log=build_log,
                               publish=publish, deadline=started + self.build_timeout, wheels=self.wheels,
                               check_index=usable_indexes(index, publish,
                                                          timeout=min(PROBE_TIMEOUT_S, self.stall_timeout)))
            os.rename(target, paths.published)
        except BaseException as exc:
            if self.on_build is not None:
                self.on_build(time.monotonic() - started, False)
            await asyncio.shield(asyncio.to_thread(cache.remove_tree, target))
            if isinstance(exc, TimeoutError):  # a deadline that fired outside uv's own runner (an OSError too)
                raise VenvError(f"venv build timed out after {self.build_timeout:g}s") from exc
            if isinstance(exc, OSError):
                where = exc.filename or target
                raise VenvError(f"venv build failed: {exc.strerror or exc} ({where})") from exc
            raise
        if self.on_build is not None:
            self.on_build(time.monotonic() - started, True)
        await publish(VenvProgress(message=f"venv ready in {time.monotonic() - started:.2f}s: "
                                   f"{len(meta['installed'])} package(s) installed, {len(meta['skipped'])} from "
                                   f"{'the base interpreter' if spec.own_copies else 'xinfd'}'s environment"))

    # ---- management --------------------------------------------------------------------------------------

    def entries(self, model: str | None = None, *, verify: bool = False) -> list[dict[str, Any]]:
        """One row per published venv (``venv list``). ``verify`` adds ``damaged``: every file of the venv's
        installed distributions whose content no longer matches its ``RECORD`` hash, plus the reason the
        per-launch check would refuse the venv, if any. It reads every file: run it in a thread."""
        rows = []
        for group in cache.iter_groups(self.home):
            if model is not None and group.parent.name != model:
                continue
            for venv in cache.published_venvs(group):
                current = (group / venv.name.rsplit("-", 1)[0]).resolve() == venv.resolve()
                row = cache.describe(venv, cache.read_metadata(venv), current=current)
                row["in_use_by"] = sorted(self.in_use.get(str(venv), ()))
                if verify:
                    problem = cache.verify(venv, row["digest"] or "")
                    row["damaged"] = ([problem] if problem else []) + cache.verify_records(venv)
                rows.append(row)
        return rows

    async def create(self, model: ModelSpec, engine: str, overrides: Sequence[str] = (),
                     publish: Publish = discard, interpreter: Interpreter | None = None) -> Path:
        """Build (or reuse) a venv ahead of a launch (``xinfctl venv create``)."""
        spec = self.make_spec(model, engine, overrides, interpreter)
        if not spec.requirements and not spec.own_copies:
            raise VenvSpecError(f"model {model.name!r} with engine {engine!r} has no virtualenv packages")
        return await self.ensure(spec, publish)

    async def remove(self, model: str, engine: str | None = None,
                     python_version: str | None = None) -> list[str]:
        """Remove a model's venvs (filtered); refuses, removing nothing, if any of them is in use."""
        check_name(model, "model name")
        if python_version is not None and not _VERSION_FILTER_RE.match(python_version):
            raise VenvSpecError(f"python must be a version like 3.12 or 3.12.1, got {python_version!r}",
                                param="python")
        group_root = cache.venv_root(self.home) / model
        targets = [v for v in self._matching(group_root, engine, python_version)]
        busy = {str(v): sorted(self.in_use[str(v)]) for v in targets if str(v) in self.in_use}
        if busy:
            desc = "; ".join(f"{p} used by {', '.join(u)}" for p, u in busy.items())
            raise VenvInUseError(f"venv in use, not removed: {desc} (terminate those models first)")
        return [str(p) for p in await self._delete(targets)]

    async def gc(self) -> list[str]:
        """Remove every venv no running model uses, plus crash leftovers; keeps in-use ones untouched."""
        removed = [str(p) for p in cache.clean_leftovers(self.home)]
        for group in cache.iter_groups(self.home):
            unused = [v for v in cache.published_venvs(group) if str(v) not in self.in_use]
            removed += [str(p) for p in await self._delete(unused)]
        return removed

    def _matching(self, group_root: Path, engine: str | None, python_version: str | None) -> list[Path]:
        if not group_root.is_dir():
            return []
        out = []
        for group in sorted(p for p in group_root.iterdir() if p.is_dir()):
            if engine is not None and group.name != engine:
                continue
            for venv in cache.published_venvs(group):
                if python_version is None or version_matches(venv.name.rsplit("-", 1)[0], python_version):
                    out.append(venv)
        return out

    async def _delete(self, venvs: Sequence[Path]) -> list[Path]:
        removed: list[Path] = []
        trash: list[Path] = []
        for venv in venvs:
            lock = cache.FileLock(venv.parent / f".{venv.name}.lock")
            if not lock.try_acquire():
                continue  # being built or checked right now: not ours to delete
            try:
                # Renamed away under the lock (atomic); deleted afterwards. Lock files stay: unlinking one
                # while another process waits on it would let two builders hold "the" lock.
                trash.append(cache.retire(venv))
                removed.append(venv)
                link = venv.parent / venv.name.rsplit("-", 1)[0]
                if link.is_symlink() and not link.exists():
                    link.unlink()
            finally:
                lock.release()
        for path in trash:
            await asyncio.to_thread(shutil.rmtree, path, True)
        return removed
