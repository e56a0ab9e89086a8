"""Text-to-image batching by size (``XINFERENCE_TEXT_TO_IMAGE_BATCHING_SIZE``): images/s at 1 and 4 concurrent
requests through the daemon, against sequential requests, in the same run; then 4 concurrent requests on a
daemon without the setting (each request its own pipeline call), so the batching's share is visible.

The model is a tiny random Stable Diffusion pipeline written on the spot (``tests/unit/engines/tiny_diffusion``),
or any diffusers folder given with ``--model-path``. Run from a checkout:

    python benchmarks/images.py [--requests 8] [--steps 10] [--size 64x64] [--model-path DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from _daemon import running_daemon, xinfctl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


async def images_per_second(endpoint: str, *, requests: int, concurrency: int, size: str, steps: int) -> float:
    """``requests`` one-image requests, ``concurrency`` at a time (0: strictly one after another)."""
    body = {"model": "bench-sd", "prompt": "the quick brown fox", "size": size, "response_format": "b64_json",
            "num_inference_steps": steps}
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(seed: int) -> None:
            async with session.post(f"{endpoint}/v1/images/generations", json={**body, "seed": seed}) as answer:
                if answer.status != 200:
                    raise SystemExit(f"request failed: {answer.status} {await answer.text()}")
                await answer.read()

        await one(0)  # warm-up: the first call pays for lazy initialisation
        started = time.perf_counter()
        if concurrency == 0:
            for seed in range(requests):
                await one(seed)
        else:
            gate = asyncio.Semaphore(concurrency)

            async def gated(seed: int) -> None:
                async with gate:
                    await one(seed)

            await asyncio.gather(*(gated(seed) for seed in range(requests)))
        return requests / (time.perf_counter() - started)


def endpoint_of(env: dict[str, str]) -> str:
    return str(xinfctl(env, "status")["endpoint"]).rstrip("/")


def launch(env: dict[str, str], home: Path, folder: str, size: str, steps: int) -> None:
    spec = {"name": "bench-sd", "abilities": ["image"], "engines": ["diffusers"], "context_length": 77,
            "extra": {"model_path": folder, "sizes": [size], "num_inference_steps": steps}}
    spec_file = home / "bench-sd.json"
    spec_file.write_text(json.dumps(spec))
    xinfctl(env, "register", "--file", str(spec_file))
    xinfctl(env, "launch", "-n", "bench-sd", "-e", "diffusers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", default="64x64")
    parser.add_argument("--model-path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xinfd-bench-images-") as tmp:
        folder = args.model_path
        if folder is None:
            from tests.unit.engines.tiny_diffusion import build_tiny_sd

            folder = str(build_tiny_sd(Path(tmp) / "tiny-sd"))
        rows: list[tuple[str, float]] = []
        batching = args.size.replace("x", "*")
        for label, extra in (("batching on", {"XINFERENCE_TEXT_TO_IMAGE_BATCHING_SIZE": batching}),
                             ("batching off", {})):
            home = Path(tmp) / label.replace(" ", "-")
            home.mkdir()
            os.environ.pop("XINFERENCE_TEXT_TO_IMAGE_BATCHING_SIZE", None)
            os.environ.update(extra)
            with running_daemon(home) as env:
                launch(env, home, folder, args.size, args.steps)
                endpoint = endpoint_of(env)
                runs = ((f"{label}: sequential", 0), (f"{label}: 1 concurrent", 1), (f"{label}: 4 concurrent", 4))
                for name, concurrency in runs if label == "batching on" else runs[2:]:
                    rate = asyncio.run(images_per_second(endpoint, requests=args.requests, concurrency=concurrency,
                                                         size=args.size, steps=args.steps))
                    rows.append((name, rate))
        baseline = rows[0][1]
        print(f"{args.requests} one-image requests, {args.size}, {args.steps} steps, "
              f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
        print(f"{'run':<28} {'images/s':>9} {'vs sequential':>14}")
        for name, rate in rows:
            print(f"{name:<28} {rate:>9.2f} {rate / baseline:>13.2f}x")


if __name__ == "__main__":
    main()
