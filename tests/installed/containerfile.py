"""The Containerfile read as data: its stages' instructions, parsed the way the image builder reads them, so the
container reproduction runs from the very values the image bakes in (and fails when the two drift apart)."""

from __future__ import annotations

import json
import re
import shlex
import signal
from dataclasses import dataclass
from pathlib import Path

# What the base image (python:3.11-slim-bookworm) itself sets, before the Containerfile's ENV lines.
BASE_ENV = {"PATH": "/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True, kw_only=True)
class Instruction:
    keyword: str
    args: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheck:
    command: list[str]
    timeout: float
    interval: float
    retries: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Image:
    """The runtime (last) stage, plus the build stage's inputs."""

    env: dict[str, str]  # BASE_ENV, then each ENV in order, $VAR expanded as the builder does
    user: tuple[int, int]
    workdir: str
    volumes: list[str]
    healthcheck: HealthCheck
    stop_signal: signal.Signals
    stop_timeout: float  # what the file tells operators to pass to podman stop -t
    entrypoint: list[str]
    build_copies: list[tuple[str, str]]  # COPY src dst of the first stage (its build context)
    build_runs: list[str]
    final_copies_from: list[str]  # COPY --from=build paths of the runtime stage


def instructions(text: str) -> list[list[Instruction]]:
    """Stages (split at FROM) of instructions; comment lines are dropped, backslash continuations joined."""
    stages: list[list[Instruction]] = []
    logical, pending = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    for line in logical:
        keyword, _, args = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append(Instruction(keyword=keyword.upper(), args=args.strip()))
    return stages


def _seconds(value: str) -> float:
    match = _DURATION.match(value)
    assert match, f"not a duration: {value}"
    return float(match.group(1)) * _UNITS[match.group(2)]


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), ""), value)


def parse(path: Path) -> Image:
    text = path.read_text()
    stages = instructions(text)
    build, final = stages[0], stages[-1]
    env = dict(BASE_ENV)
    user, workdir, volumes, entrypoint = (0, 0), "/", [], []
    health: HealthCheck | None = None
    stop_signal = signal.SIGTERM
    copies_from: list[str] = []
    for ins in final:
        if ins.keyword == "ENV":
            for pair in shlex.split(ins.args):
                name, _, value = pair.partition("=")
                env[name] = _expand(value, env)
        elif ins.keyword == "USER":
            uid, _, gid = ins.args.partition(":")
            user = (int(uid), int(gid or uid))
        elif ins.keyword == "WORKDIR":
            workdir = ins.args
        elif ins.keyword == "VOLUME":
            volumes = json.loads(ins.args)
        elif ins.keyword == "STOPSIGNAL":
            stop_signal = signal.Signals[ins.args]
        elif ins.keyword == "ENTRYPOINT":
            entrypoint = json.loads(ins.args)
        elif ins.keyword == "COPY" and ins.args.startswith("--from="):
            copies_from.append(ins.args.split()[1])
        elif ins.keyword == "HEALTHCHECK":
            options, _, command = ins.args.partition(" CMD ")
            opts = dict(o.removeprefix("--").split("=", 1) for o in options.split())
            health = HealthCheck(
                command=json.loads(command),
                timeout=_seconds(opts.get("timeout", "30s")),
                interval=_seconds(opts.get("interval", "30s")),
                retries=int(opts.get("retries", "3")),
            )
    assert health is not None, "the runtime stage has no HEALTHCHECK"
    stop = re.search(r"podman stop -t (\d+)", text)
    assert stop, "the Containerfile does not document the stop timeout (podman stop -t N)"
    return Image(
        env=env,
        user=user,
        workdir=workdir,
        volumes=volumes,
        healthcheck=health,
        stop_signal=stop_signal,
        stop_timeout=float(stop.group(1)),
        entrypoint=entrypoint,
        build_copies=_copies(build),
        build_runs=[ins.args for ins in build if ins.keyword == "RUN"],
        final_copies_from=copies_from,
    )


def _copies(stage: list[Instruction]) -> list[tuple[str, str]]:
    """``COPY a b ./`` gives (a, ./) and (b, ./); the destination is relative to the stage's WORKDIR."""
    found: list[tuple[str, str]] = []
    for ins in stage:
        if ins.keyword == "COPY" and not ins.args.startswith("--"):
            *sources, dest = ins.args.split()
            found.extend((source, dest) for source in sources)
    return found
