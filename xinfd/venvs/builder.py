"""Building one model venv with uv: create, resolve, skip what the base has, install, probe, record.

uv runs with argv lists (never a shell), in its own session with a parent-death signal (a SIGKILLed daemon
leaves no uv writing into a build directory), under one deadline for the whole build, and is killed when the
launch is cancelled. Its output goes to the build log and, line by line, to the launch progress.

Skip-installed: uv reinstalls packages that a ``--system-site-packages`` venv already sees
(astral-sh/uv#4466), so we resolve first (``uv pip compile``, with the base environment's versions as
preferences), subtract what the base already has at the same version, and install the rest with
``--no-deps``.

About 490 lines: one build is a single sequence under one deadline (create, resolve, subtract, install,
probe, record); splitting its steps would spread the deadline and kill-on-cancel rules across files. What
splits out next is the runner (``Uv``, ``run_logged``, ``_run_python``), which has no build logic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import site
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from xinfd.childproc import spawn_child
from xinfd.events import Publish, VenvProgress
from xinfd.venvs import installed
from xinfd.venvs.bundle import requirement_lines
from xinfd.venvs.cache import MANIFEST, METADATA, METADATA_FORMAT, manifest, site_packages, write_json_atomic
from xinfd.venvs.reach import first_index_use, index_args, waiting_hosts
from xinfd.venvs.spec import IndexOptions, VenvError, VenvSpec
from xinfd.venvs.wheels import WheelCache, declared_build_env, source_builds_for

# packaging is imported in the functions that use it: the daemon imports this module at start and needs
# packaging only once it builds a venv (idle memory, tests/unit/test_daemon_imports.py).

log = logging.getLogger(__name__)
_T = TypeVar("_T")

PTH_NAME = "_xinfd_daemon_env.pth"
# Seconds without output after which a running build tool's progress says what it is waiting on.
HEARTBEAT_S = 10.0
DEFAULT_STALL_TIMEOUT = 30.0
INSTALLED_RE = re.compile(r"Installed (\d+) packages? in ([\d.]+)(ms|s)")
# Lists every distribution the new (still empty) venv's interpreter sees: the daemon's and the base's.
# The first distribution of a name on sys.path wins, as it does for imports.
_BASE_DISTS = (
    "import importlib.metadata as m, json, re\n"
    "seen = {}\n"
    "for d in m.distributions():\n"
    "    if d.metadata['Name']:\n"
    "        seen.setdefault(re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(), d.version)\n"
    "print(json.dumps(seen))\n"
)


# Prints, as JSON, the distributions of argv[1] (name -> version) this interpreter does not see at that version
# (checked first: a missing distribution is the precise reason an import below would fail), then, when all are
# there, imports the modules argv[2:].
# The import probe. The skipped distributions are checked on the interpreter's own ``sys.path`` (after its .pth
# files ran) with ``xinfd.venvs.installed`` (dist-info directory names, first of a name wins, as for imports):
# the same reading that predicted them, at a fraction of importing ``importlib.metadata`` and ``packaging``,
# which cost more than the rest of the probe together. ``packaging`` is imported only for a version whose
# spelling differs (a base scanned by another interpreter's importlib.metadata); with nothing skipped (``{}``)
# there is nothing to list, and the probe prints nothing before its imports.
_PROBE = (
    "import importlib, sys\n"
    "wrong = {}\n"
    "if sys.argv[1] != '{}':\n"
    "    import json\n"
    "    from xinfd.venvs.installed import visible\n"
    "    seen = visible(sys.path)\n"
    "    for name, version in json.loads(sys.argv[1]).items():\n"
    "        found = seen.get(name)\n"
    "        if found != version:\n"
    "            from packaging.version import InvalidVersion, Version\n"
    "            try:\n"
    "                same = found is not None and Version(found) == Version(version)\n"
    "            except InvalidVersion:\n"
    "                same = False\n"
    "            if not same:\n"
    "                wrong[name] = found\n"
    "    print(json.dumps(wrong))\n"
    "if wrong:\n"
    "    sys.exit(0)\n"
    "for m in sys.argv[2:]:\n"
    "    try:\n"
    "        importlib.import_module(m)\n"
    "    except BaseException as exc:\n"
    "        sys.exit(f'{m}: {exc!r}')\n"
)

_ENGINE_PROBE = (
    "import sys\n"
    "from xinfd.plugins import make_plugin_manager\n"
    "plugins = make_plugin_manager()\n"
    "if sys.argv[1] not in plugins.engines:\n"
    "    failed = '; '.join(f'{f.name}: {f.error}' for f in plugins.failures) or 'none'\n"
    "    sys.exit(f'not registered (registered: {sorted(plugins.engines)}; plugin failures: {failed})')\n"
)


@dataclass(slots=True)
class BuildLog:
    """Collects uv's output for the log file and the failure message."""

    path: Path
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def tail(self, n: int = 3) -> str:
        """uv's error and the lines after it (its "cause"/"hint"), else its last lines, as one line."""
        useful = [ln.strip() for ln in self.lines if ln.strip() and not ln.startswith("$ ")]
        first = next((i for i in range(len(useful) - 1, -1, -1) if useful[i].lower().startswith(
            ("error", "\u00d7"))), None)  # uv's diagnostics start with "error" or a U+00D7 cross
        return " | ".join(useful[first:first + n] if first is not None else useful[-n:])


class Uv:
    """The uv binary from the ``uv`` package, its version checked once, run with a deadline."""

    def __init__(self, binary: str | None = None, *, cache_dir: Path | None = None,
                 stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> None:
        if binary is None:
            from uv import find_uv_bin

            binary = find_uv_bin()
        self.binary = binary
        self.cache_dir = cache_dir
        self.stall_timeout = stall_timeout
        self._version: str | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"NO_COLOR": "1", "UV_NO_PROGRESS": "1", "UV_PYTHON_DOWNLOADS": "never"})
        env.pop("VIRTUAL_ENV", None)
        if self.cache_dir is not None and "UV_CACHE_DIR" not in os.environ:
            env["UV_CACHE_DIR"] = str(self.cache_dir)
        # A read that stalls this long fails (uv's default, 30 s per try with 3 retries, let a silent index
        # hold a build for minutes); one retry covers a dropped connection. The user's own values win.
        env.setdefault("UV_HTTP_TIMEOUT", str(max(1, round(self.stall_timeout))))
        env.setdefault("UV_HTTP_RETRIES", "1")
        return env

    async def version(self) -> str:
        if self._version is None:
            out = await self.run(["--version"], deadline=time.monotonic() + 30)
            parts = out.split()
            self._version = parts[1] if len(parts) > 1 else "unknown"
        return self._version

    async def run(self, args: Sequence[str], *, deadline: float, log: BuildLog | None = None,
                  publish: Publish | None = None, waiting_on: str = "") -> str:
        """Run uv; returns stdout; stderr lines go to the log and the progress. Cancel kills uv's group."""
        return await run_logged([self.binary, *args], env=self.env(), deadline=deadline, log=log, publish=publish,
                                what=f"uv {' '.join(args[:2])}", waiting_on=waiting_on)


async def run_logged(argv: Sequence[str], *, env: Mapping[str, str], deadline: float, log: BuildLog | None = None,
                     publish: Publish | None = None, what: str, merge_output: bool = False,
                     waiting_on: str = "") -> str:
    """Run a build tool in its own session; returns stdout. Its stderr (uv's progress) goes to the build log
    and, line by line, to the launch progress; ``merge_output`` sends stdout there too (pip reports progress
    on stdout) and returns "". While the tool is silent, the progress says every ``HEARTBEAT_S`` how long, and
    what it is waiting on (``waiting_on``: the indexes). Cancel or the deadline kills its whole group."""
    if log is not None:
        log.add("$ " + " ".join(argv))
    proc = await spawn_child(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_output else asyncio.subprocess.PIPE, env=dict(env),
    )
    progress = proc.stdout if merge_output else proc.stderr

    async def collect() -> bytes:
        assert proc.stdout is not None
        return b"" if merge_output else await proc.stdout.read()

    async def pump() -> None:
        assert progress is not None
        quiet_since = time.monotonic()
        while True:
            try:
                raw = await asyncio.wait_for(progress.readline(), timeout=HEARTBEAT_S)
            except TimeoutError:  # readline keeps its buffer when cancelled while waiting for data
                if publish is not None:
                    await publish(VenvProgress(message=f"  {what}: no output for "
                                               f"{time.monotonic() - quiet_since:.0f} s"
                                               + (f", waiting on {waiting_on}" if waiting_on else "")))
                continue
            if not raw:
                break
            quiet_since = time.monotonic()
            line = raw.decode(errors="replace").rstrip()
            if log is not None:
                log.add(line)
            if publish is not None and line.strip():
                await publish(VenvProgress(message=f"  {what.split()[0]}: {line.strip()}"))

    try:
        remaining = max(0.1, deadline - time.monotonic())
        out, _ = await asyncio.wait_for(asyncio.gather(collect(), pump()), timeout=remaining)
        code = await proc.wait()
    except (asyncio.CancelledError, TimeoutError) as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise VenvError(f"venv build timed out ({what} still running at the deadline)") from None
        raise
    stdout = out.decode(errors="replace")
    if code != 0:
        reason = log.tail() if log is not None else ""
        raise VenvError(f"{what} failed (exit {code}): {reason or 'no output'}")
    return stdout


def daemon_site_dirs() -> list[str]:
    """The daemon venv's site-packages, when the daemon runs in a venv (README: .venv): a model venv made with
    ``--system-site-packages`` sees only the *base* interpreter's, so xinfd and plugins would not import."""
    if sys.prefix == sys.base_prefix:
        return []
    return [p for p in site.getsitepackages() if os.path.isdir(p)]


def count_installed(log: BuildLog) -> int:
    for line in reversed(log.lines):
        if m := INSTALLED_RE.search(line):
            return int(m.group(1))
    return 0


def parse_pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a compiled requirements file (other lines kept verbatim by their name)."""
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name, sep, version = line.partition("==")
        key = str(canonicalize_name(name.split("@")[0].split("[")[0].strip()))
        pins[key] = version.split(";")[0].strip() if sep else line
    return pins


async def build(
    spec: VenvSpec,
    target: Path,
    *,
    uv: Uv,
    index: IndexOptions,
    probe_modules: Sequence[str],
    log: BuildLog,
    publish: Publish,
    deadline: float,
    wheels: WheelCache | None = None,
    check_index: Awaitable[IndexOptions] | None = None,
) -> dict[str, Any]:
    """Build ``spec`` into the (new, unpublished) directory ``target``; returns the metadata written there.

    ``check_index`` (``xinfd.venvs.reach.usable_indexes``) runs alongside the build: the first uv call that
    needs an index starts with ``index`` as given and is redone only when the check drops a location or fails
    (``xinfd.venvs.reach.first_index_use``), so a build whose indexes all answer never waits for the check.
    Packages the engine wants built from source (``spec.source_builds``) come from ``wheels``, which builds
    each one once with the engine's settings (``xinfd.venvs.wheels``).
    The metadata's ``phase_seconds`` says where the time went (``benchmarks/venv.py`` prints it)."""
    started = time.monotonic()
    phases: dict[str, float] = {}

    async def timed(name: str, step: Awaitable[_T]) -> _T:
        t0 = time.monotonic()
        try:
            return await step
        finally:
            phases[name] = round(phases.get(name, 0.0) + time.monotonic() - t0, 3)

    checking = None if check_index is None else asyncio.ensure_future(timed("index check", check_index))
    try:
        return await _build(spec, target, uv=uv, index=index, checking=checking, probe_modules=probe_modules,
                            log=log, publish=publish, deadline=deadline, wheels=wheels, timed=timed,
                            phases=phases, started=started)
    finally:
        if checking is not None and not checking.done():
            checking.cancel()
            with contextlib.suppress(BaseException):
                await checking


async def _build(
    spec: VenvSpec, target: Path, *, uv: Uv, index: IndexOptions,
    checking: asyncio.Future[IndexOptions] | None, probe_modules: Sequence[str], log: BuildLog,
    publish: Publish, deadline: float, wheels: WheelCache | None,
    timed: Callable[[str, Awaitable[Any]], Awaitable[Any]], phases: dict[str, float], started: float,
) -> dict[str, Any]:
    python = str(target / "bin" / "python")
    sp = target / "lib" / f"python{'.'.join(spec.python_version.split('.')[:2])}" / "site-packages"
    # Only the daemon's own interpreter may see its site-packages: compiled extensions are ABI-specific.
    extra_dirs = [] if spec.own_copies else daemon_site_dirs()
    create = timed("uv venv", uv.run(["venv", "--relocatable", "--system-site-packages", "--python", spec.python,
                                      "--quiet", str(target)], deadline=deadline, log=log))
    if spec.own_copies:  # another Python: only its interpreter knows its site-packages
        await create
        base: dict[str, str] = json.loads(await timed("base scan", _run_python(python, ["-c", _BASE_DISTS],
                                                                              deadline, log)))
    else:  # the daemon's own: read the directories it will see, while uv creates the venv
        scan = asyncio.to_thread(installed.visible, installed.predicted_path(sp, extra_dirs, env=dict(_probe_env())))
        _, base = await asyncio.gather(create, timed("base scan", scan))
    sp = site_packages(target)
    if extra_dirs:
        # Appended after the venv's own site-packages: venv packages shadow the daemon's.
        (sp / PTH_NAME).write_text("".join(f"import site; site.addsitedir({d!r})\n" for d in extra_dirs))
    todo, satisfied = split_satisfied(spec.requirements, base) if spec.skip_installed else (
        list(spec.requirements), [])
    base_name = f"Python {spec.python_version}'s site-packages" if spec.own_copies else "xinfd's environment"
    if spec.own_copies:
        # Another Python: xinfd and the engine's plugin come in as distributions, their dependencies resolved
        # for this interpreter together with the model's packages (xinfd.venvs.bundle).
        await publish(VenvProgress(message=f"Python {spec.python_version} is not xinfd's: copying "
                                   f"{', '.join(spec.bundled)} into the venv"))
        todo = [*await asyncio.to_thread(requirement_lines, spec.bundled, target / "xinfd-wheels"), *todo]
    requirements = target / "xinfd-requirements.in"
    requirements.write_text("".join(r + "\n" for r in todo))
    lock = target / "xinfd-resolved.txt"
    resolved: dict[str, str] = {}
    installed_count = 0
    t0 = time.monotonic()
    local_wheels: dict[str, Path] = {}
    one_step = bool(todo) and not spec.skip_installed and not spec.source_builds
    if one_step:
        # Nothing to subtract and nothing to build first: one ``uv pip install`` resolves and installs, as a
        # hand-rolled launcher would (uv ignores the base's copies in a --system-site-packages venv anyway).
        await publish(VenvProgress(message=f"installing {len(todo)} requirement(s) (skip-installed off)"))
        index = await timed("uv pip install", first_index_use(checking, index, lambda idx: uv.run(
            ["pip", "install", "--python", python, "-r", str(requirements), *index_args(idx)], deadline=deadline,
            log=log, publish=publish, waiting_on=waiting_hosts(idx))))
        resolved = dict(pin.split("==", 1) for pin in installed.freeze(sp) if "==" in pin)
        lock.write_text("".join(f"{n}=={v}\n" for n, v in sorted(resolved.items())))
        installed_count = count_installed(log) or len(resolved)
    elif todo:
        if spec.skip_installed:
            # The existing output file is uv's preference list: the base's versions win where they fit.
            lock.write_text("".join(f"{n}=={v}\n" for n, v in sorted(base.items())))
        await publish(VenvProgress(message=f"resolving {len(todo)} requirement(s) "
                                   f"({len(satisfied)} already satisfied by {base_name})"))
        index = await timed("uv pip compile", first_index_use(checking, index, lambda idx: uv.run(
            ["pip", "compile", str(requirements), "--python", python, "--no-header", "--no-annotate", "--quiet",
             "-o", str(lock), *index_args(idx)], deadline=deadline, log=log, publish=publish,
            waiting_on=waiting_hosts(idx))))
        resolved = parse_pins(lock.read_text())
    wanted = [n for n, v in resolved.items() if not (spec.skip_installed and base.get(n) == v)]
    skipped = sorted((set(resolved) - set(wanted)) | set(satisfied))
    if wanted and not one_step:
        local_wheels = await _source_wheels(spec, {n: resolved[n] for n in wanted}, wheels, index=index, uv=uv,
                                            log=log, publish=publish, deadline=deadline)
        t0 = time.monotonic()
        install_file = target / "xinfd-install.txt"
        install_file.write_text("".join(
            f"{local_wheels[n]}\n" if n in local_wheels else _pin_line(n, resolved[n]) for n in wanted))
        await timed("uv pip install", uv.run(["pip", "install", "--python", python, "--no-deps", "-r",
                                              str(install_file), *index_args(index)], deadline=deadline,
                                             log=log, publish=publish, waiting_on=waiting_hosts(index)))
        installed_count = count_installed(log) or len(wanted)
    install_s = time.monotonic() - t0
    await publish(VenvProgress(message=f"installed {installed_count} package(s) in {install_s:.2f}s "
                               f"({len(skipped)} already provided by {base_name})"))
    # One interpreter start proves the venv: its modules import, and every distribution the build skipped is
    # there at the version the skip assumed (the base scan read directories; this is the interpreter's word).
    # The record (freeze from .dist-info, the file manifest) is written meanwhile: neither changes the venv.
    expected = {n: base[n] for n in skipped if n in base}
    checks = [timed("import probe", _run_python(
        python, ["-c", _PROBE, json.dumps(expected), "xinfd.worker", *probe_modules], deadline, log,
        what="probe: a module does not import in the new venv"))]
    if spec.own_copies:
        # The worker finds its engine through the plugins it can load with this interpreter (entry points of
        # the copied distributions, XINFD_PLUGINS): prove the engine is among them before publishing.
        checks.append(_run_python(python, ["-c", _ENGINE_PROBE, spec.engine], deadline, log,
                                  what=f"probe: engine {spec.engine!r} with Python {spec.python_version}"))
    record = timed("record", asyncio.to_thread(lambda: (installed.freeze(sp), manifest(target))))
    (freeze, files), uv_version, probed, *_ = await asyncio.gather(record, uv.version(), *checks)
    # The probe's first line (printed before its imports, whose own output may follow), when it checked any.
    lines = probed.splitlines()
    missing = json.loads(lines[0]) if expected and lines else {}
    if missing:
        raise VenvError("the new venv does not see what the build skipped as already installed: " + ", ".join(
            f"{n} {expected[n]} (found {v or 'none'})" for n, v in sorted(missing.items())))
    meta = {
        "format": METADATA_FORMAT,
        "model_name": spec.model_name,
        "engine": spec.engine,
        "python_version": spec.python_version,
        "python": spec.python,
        "digest": spec.digest(),
        "requirements": list(spec.requirements),
        "skip_installed": spec.skip_installed,
        "index": {"index_url": index.index_url, "extra_index_urls": list(index.extra_index_urls),
                  "find_links": list(index.find_links)},
        "resolved": [f"{n}=={v}" for n, v in sorted(resolved.items())],
        "installed": sorted(wanted),
        "skipped": skipped,
        "freeze": freeze,
        "daemon_site_dirs": extra_dirs,
        "bundled": list(spec.bundled),
        "built_from_source": {n: str(w) for n, w in sorted(local_wheels.items())},
        "uv_version": uv_version,
        "created": time.time(),
        "build_seconds": round(time.monotonic() - started, 3),
        "install_seconds": round(install_s, 3),
        "phase_seconds": phases,
    }
    t0 = time.monotonic()
    write_json_atomic(target / MANIFEST, files, indented=False)  # thousands of entries: the C encoder
    write_json_atomic(target / METADATA, meta)
    phases["record"] = round(phases.get("record", 0.0) + time.monotonic() - t0, 3)
    return meta


async def _source_wheels(spec: VenvSpec, wanted: Mapping[str, str], wheels: WheelCache | None, *,
                         index: IndexOptions, uv: Uv, log: BuildLog, publish: Publish,
                         deadline: float) -> dict[str, Path]:
    """name -> local wheel for the wanted packages the engine wants built from source (built once, cached)."""
    builds = source_builds_for(wanted, declared_build_env(spec.source_builds), spec.python_version)
    if not builds:
        return {}
    if wheels is None:
        raise VenvError(f"{', '.join(b.name for b in builds)} must be built from source, but no wheel cache is "
                        f"configured")

    async def uv_run(args: Sequence[str]) -> str:
        return await uv.run(args, deadline=deadline, log=log)

    async def run(argv: Sequence[str], *, env: Mapping[str, str]) -> str:
        return await run_logged(argv, env=env, deadline=deadline, log=log, publish=publish, what="pip wheel",
                                merge_output=True)

    found: dict[str, Path] = {}
    for source_build in builds:
        found[source_build.name] = await wheels.ensure(source_build, python=spec.python, index=index,
                                                       uv_run=uv_run, run=run, publish=publish)
    return found


def split_satisfied(requirements: Sequence[str], base: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """Requirements the base environment already satisfies (name present, version in the specifier, no
    extras) are not resolved at all: the index need not even have them (``#system_x#`` pins, mirrors that lack
    what the image ships). Returns (to resolve, satisfied names)."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    todo: list[str] = []
    satisfied: list[str] = []
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            todo.append(text)
            continue
        name = str(canonicalize_name(req.name))
        version = base.get(name)
        if version is not None and not req.extras and req.url is None and req.specifier.contains(
                version, prereleases=True):
            satisfied.append(name)
        else:
            todo.append(text)
    return todo, satisfied


def _pin_line(name: str, pin: str) -> str:
    return f"{pin}\n" if "@" in pin or " " in pin else f"{name}=={pin}\n"


async def _run_python(python: str, args: Sequence[str], deadline: float, log: BuildLog, *,
                      what: str = "the venv's interpreter failed") -> str:
    proc = await spawn_child(
        python, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=_probe_env(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=max(0.1, deadline - time.monotonic()))
    except (asyncio.CancelledError, TimeoutError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    text = err.decode(errors="replace").strip()
    if text:
        log.add(text)
    if proc.returncode != 0:
        last = text.splitlines()[-1] if text else f"exit {proc.returncode}"
        raise VenvError(f"{what}: {last}")
    return out.decode()


def _probe_env() -> Mapping[str, str]:
    """The replica's environment as far as imports go (PYTHONPATH included), minus the daemon's venv."""
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    return env
