"""Model-venv builds: xinfd's build vs the same raw uv commands, phase by phase, and the cached relaunch.

For one spec (default: ``transformers==4.37.2``, the old-transformers venv; xinfd's own environment already has
most of its dependencies, much as a GPU image already has torch), it reports, in one run:

* xinfd's cold build (a venv that does not exist yet) with skip-installed off and on, vs running
  ``uv venv`` + ``uv pip install`` directly with the same spec and index options (target: 1.2x or less);
* where each build's time went (``phase_seconds`` of the venv's metadata; raw uv: its two commands);
* the venv step of a cached relaunch (look up, validate, hand over; target: 50 ms or less).

Fair by construction: the same spec, the same indexes and flags (pip's configuration, as a launch with
``inherit_pip_config`` uses it: every index, ``--index-strategy unsafe-best-match``, pip's constraints), and
the same uv cache, warmed by one xinfd build first, so every case runs with a *warm* uv cache (downloads are
not what we compare). The cases run interleaved, ``--rounds`` times, and the table shows each one's median;
pip's configuration is read once before (a daemon reads it once). On a shared, loaded machine the numbers
are indicative only. Run from a checkout with xinfd installed:

    python benchmarks/venv.py [--package SPEC ...] [--rounds 3] [--relaunches 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from xinfd.environments import EnvironmentRequest
from xinfd.events import discard
from xinfd.hookspecs import RegisterEngine, WorkerEngine, hookimpl
from xinfd.plugins import make_plugin_manager
from xinfd.supervisor import LaunchRequest
from xinfd.types import Ability, Availability, EmbeddingModel, ModelSpec, Platform, ReplicaContext, TextModel
from xinfd.venvs.builder import INSTALLED_RE, Uv
from xinfd.venvs.pipconfig import PipConfig
from xinfd.venvs.provider import VenvProvider

ENGINE = "bench"


class _BenchEngine(WorkerEngine):
    """One engine with no dependencies of its own, so the spec is exactly ``--package``."""

    name = ENGINE
    abilities: tuple[Ability, ...] = ("generate",)

    def availability(self, model: ModelSpec, platform: Platform) -> Availability:
        return Availability(available=True)

    def load(self, model: ModelSpec, replica: ReplicaContext) -> TextModel | EmbeddingModel:
        raise RuntimeError("the venv benchmark builds venvs; it never loads a model")


class _BenchPlugin:
    @hookimpl
    def xinfd_register_engines(self, register: RegisterEngine) -> None:
        register(_BenchEngine())


async def build_once(
    root: Path, name: str, packages: list[str], *, skip: bool, uv: Uv, pip: PipConfig
) -> tuple[float, dict[str, Any], VenvProvider, ModelSpec]:
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[_BenchPlugin()], env={})
    provider = VenvProvider(home=root / name, plugins=plugins, enabled=True, skip_installed=skip, uv=uv, pip_config=pip)
    spec = ModelSpec(name="bench", abilities=("generate",), engines=(ENGINE,), virtualenv={"packages": packages})
    started = time.perf_counter()
    path = await provider.create(spec, ENGINE, publish=discard)
    seconds = time.perf_counter() - started
    meta = json.loads((path / "xinfd-venv.json").read_text())
    return seconds, meta, provider, spec


def raw_uv(root: Path, packages: list[str], uv: Uv, index_args: list[str]) -> tuple[float, dict[str, float], int]:
    """What a hand-rolled launcher does: one venv, one ``uv pip install`` of the whole spec."""
    target = root
    env = uv.env()
    started = time.perf_counter()
    subprocess.run(
        [uv.binary, "venv", "--quiet", "--system-site-packages", "--python", sys.executable, str(target)],
        check=True,
        env=env,
    )
    created = time.perf_counter()
    done = subprocess.run(
        [uv.binary, "pip", "install", "--python", str(target / "bin" / "python"), *index_args, *packages],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    end = time.perf_counter()
    count = next((int(m.group(1)) for m in map(INSTALLED_RE.search, done.stderr.splitlines()) if m), 0)
    return end - started, {"uv venv": created - started, "uv pip install": end - created}, count


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", action="append", help="a requirement of the spec (repeatable)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs of each case (median shown)")
    parser.add_argument("--relaunches", type=int, default=20)
    args = parser.parse_args()
    packages = args.package or ["transformers==4.37.2"]  # the spec's old-transformers venv (GOT-OCR2)
    cases = ("raw uv venv + uv pip install", "xinfd, skip-installed off", "xinfd, skip-installed on")
    seconds: dict[str, list[float]] = {c: [] for c in cases}
    phases: dict[str, list[dict[str, float]]] = {c: [] for c in cases}
    counts: dict[str, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory(prefix="xinfd-venv-bench-") as tmp:
        root = Path(tmp)
        uv = Uv(cache_dir=root / "uv-cache")
        pip = PipConfig()
        index = await pip.options()
        # The same resolution as xinfd's inherit_pip_config (pip's semantics: every index, best version).
        index_args = (
            index.uv_args()
            + ["--index-strategy", "unsafe-best-match"]
            + [a for c in index.constraints for a in ("--constraint", c)]
        )
        await uv.version()  # once per daemon, like pip's configuration
        # Warm uv's cache (downloads are not what we compare), then measure.
        await build_once(root, "warm", packages, skip=False, uv=uv, pip=pip)
        provider: VenvProvider | None = None
        spec: ModelSpec | None = None
        for n in range(args.rounds):
            secs, raw_phases, count = raw_uv(root / f"raw-{n}", packages, uv, index_args)
            seconds[cases[0]].append(secs)
            phases[cases[0]].append(raw_phases)
            counts[cases[0]] = (count, 0)
            for case, skip in ((cases[1], False), (cases[2], True)):
                secs, meta, provider, spec = await build_once(root, f"{skip}-{n}", packages, skip=skip, uv=uv, pip=pip)
                seconds[case].append(secs)
                phases[case].append(meta.get("phase_seconds", {}))
                counts[case] = (len(meta["installed"]), len(meta["skipped"]))

        assert provider is not None and spec is not None
        relaunch: list[float] = []
        for i in range(args.relaunches):
            request = EnvironmentRequest(
                model_uid=f"r{i}", spec=spec, engine=ENGINE, options=LaunchRequest(model_name=spec.name)
            )
            started = time.perf_counter()
            await provider.prepare(request, discard)
            relaunch.append((time.perf_counter() - started) * 1000)
            provider.release(request.model_uid)

    raw = statistics.median(seconds[cases[0]])
    print(
        f"spec: {' '.join(packages)}   (index: pip config; python {sys.version.split()[0]}; uv cache warm for "
        f"every case; median of {args.rounds} interleaved rounds; indicative on a loaded machine)"
    )
    print(f"{'case':<32}{'installed':>10}{'skipped':>9}{'seconds':>9}{'vs raw':>8}   all rounds")
    for case in cases:
        got = statistics.median(seconds[case])
        installed, skipped = counts[case]
        rounds = " ".join(f"{x:.2f}" for x in seconds[case])
        print(f"{case:<32}{installed:>10}{skipped:>9}{got:>9.2f}{got / raw:>7.2f}x   {rounds}")
    names = list(dict.fromkeys(p for case in cases for row in phases[case] for p in row))
    print("\nphase seconds (median; phases that overlap run at the same time, so they sum to more than the total)")
    print(f"{'phase':<18}" + "".join(f"{c.split(',')[-1].strip()[:16]:>18}" for c in cases))
    for name in names:
        cells = []
        for case in cases:
            values = [row[name] for row in phases[case] if name in row]
            cells.append(f"{statistics.median(values):>18.3f}" if values else f"{'-':>18}")
        print(f"{name:<18}" + "".join(cells))
    print(
        f"\ncached relaunch venv step: median {statistics.median(relaunch):.1f} ms, "
        f"max {max(relaunch):.1f} ms over {len(relaunch)} (target <= 50 ms)"
    )


if __name__ == "__main__":
    asyncio.run(main())
