"""Model-venv builds: skip-installed on vs off, xinfd's build vs the same raw uv commands, cached relaunch.

For one spec (default: ``openai requests tqdm``; xinfd's own test environment already has openai and its
dependencies, much as a GPU image already has torch), it reports, in one run:

* packages installed and seconds with skip-installed on and off (the spec's "98 packages vs 7" comparison);
* xinfd's cold build (create, resolve, subtract, install, probe, record, publish) vs running
  ``uv venv`` + ``uv pip install`` directly with the same index options (ratio);
* the venv step of a cached relaunch (target: 50 ms or less).

Index options come from pip's configuration, as a launch with ``inherit_pip_config`` would use them. Each
build gets its own home, and all share one uv cache, warmed first, so the numbers compare the work, not
downloads. Run from a checkout with xinfd installed:

    python benchmarks/venv.py [--package SPEC ...] [--relaunches 20]
"""

from __future__ import annotations

import argparse
import asyncio
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
from xinfd.venvs.builder import Uv
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
    provider = VenvProvider(
        home=root / name, plugins=plugins, enabled=True, skip_installed=skip, uv=uv, pip_config=pip
    )
    spec = ModelSpec(
        name="bench", abilities=("generate",), engines=(ENGINE,), virtualenv={"packages": packages}
    )
    started = time.perf_counter()
    path = await provider.create(spec, ENGINE, publish=discard)
    seconds = time.perf_counter() - started
    meta = next(r for r in provider.entries() if r["path"] == str(path))
    import json

    meta.update(json.loads((path / "xinfd-venv.json").read_text()))
    return seconds, meta, provider, spec


def raw_uv(root: Path, packages: list[str], uv: Uv, index_args: list[str]) -> tuple[float, str]:
    """What a hand-rolled launcher does: one venv, one ``uv pip install`` of the whole spec."""
    target = root / "raw"
    env = uv.env()
    started = time.perf_counter()
    subprocess.run(
        [uv.binary, "venv", "--quiet", "--system-site-packages", "--python", sys.executable, str(target)],
        check=True,
        env=env,
    )
    done = subprocess.run(
        [uv.binary, "pip", "install", "--python", str(target / "bin" / "python"), *index_args, *packages],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    summary = next((ln.strip() for ln in done.stderr.splitlines() if ln.strip().startswith("Installed")), "?")
    return seconds, summary


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", action="append", help="a requirement of the spec (repeatable)")
    parser.add_argument("--relaunches", type=int, default=20)
    args = parser.parse_args()
    packages = args.package or ["transformers==4.37.2"]  # the spec's old-transformers venv (GOT-OCR2)
    with tempfile.TemporaryDirectory(prefix="xinfd-venv-bench-") as tmp:
        root = Path(tmp)
        uv = Uv(cache_dir=root / "uv-cache")
        pip = PipConfig()
        index = await pip.options()
        # The same resolution as xinfd's inherit_pip_config (pip's semantics: every index, best version).
        index_args = index.uv_args() + ["--index-strategy", "unsafe-best-match"] + [
            a for c in index.constraints for a in ("--constraint", c)]
        # Warm uv's cache (downloads are not what we compare), then measure.
        await build_once(root, "warm", packages, skip=False, uv=uv, pip=pip)
        on_s, on, provider, spec = await build_once(root, "skip-on", packages, skip=True, uv=uv, pip=pip)
        off_s, off, _, _ = await build_once(root, "skip-off", packages, skip=False, uv=uv, pip=pip)
        raw_s, raw_summary = raw_uv(root, packages, uv, index_args)

        relaunch: list[float] = []
        for i in range(args.relaunches):
            request = EnvironmentRequest(
                model_uid=f"r{i}", spec=spec, engine=ENGINE, options=LaunchRequest(model_name=spec.name)
            )
            started = time.perf_counter()
            await provider.prepare(request, discard)
            relaunch.append((time.perf_counter() - started) * 1000)
            provider.release(request.model_uid)

    print(f"spec: {' '.join(packages)}   (index: pip config; python {sys.version.split()[0]})")
    print(f"{'case':<34}{'installed':>10}{'skipped':>9}{'seconds':>9}{'install s':>11}")
    for name, secs, meta in (("skip-installed on (default)", on_s, on), ("skip-installed off", off_s, off)):
        print(
            f"{name:<34}{len(meta['installed']):>10}{len(meta['skipped']):>9}{secs:>9.2f}"
            f"{meta['install_seconds']:>11.2f}"
        )
    print(f"{'raw uv venv + uv pip install':<34}{raw_summary:>38}  {raw_s:.2f}s")
    print(
        f"ratio xinfd cold build (skip off) / raw uv: {off_s / raw_s:.2f}x;  skip on / raw uv: {on_s / raw_s:.2f}x"
    )
    print(
        f"cached relaunch venv step: median {statistics.median(relaunch):.1f} ms, "
        f"max {max(relaunch):.1f} ms over {len(relaunch)} (target <= 50 ms)"
    )


if __name__ == "__main__":
    asyncio.run(main())
