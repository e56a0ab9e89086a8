"""Proxy overhead: requests/s and p50/p99 latency through the daemon vs straight to the echo worker's socket.

Both paths hit the same replica in the same run, so the ratio isolates what the daemon adds (HTTP parsing,
routing, relaying). Run from a checkout with xinfd and the echo plugin installed:

    python benchmarks/proxy.py [--seconds 10] [--concurrency 8] [--stream]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from _daemon import running_daemon, xinfctl


@dataclass
class Result:
    name: str
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def load(
    name: str, session: aiohttp.ClientSession, url: str, *, seconds: float, concurrency: int, stream: bool
) -> Result:
    body = {
        "model": "echo",
        "messages": [{"role": "user", "content": "the quick brown fox jumps over the dog"}],
        "stream": stream,
    }
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                async with session.post(url, json=body) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                        continue
            except aiohttp.ClientError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return Result(name, len(latencies), errors, time.perf_counter() - started, latencies)


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="xinfd-bench-") as tmp, running_daemon(Path(tmp)) as env:
        status = xinfctl(env, "status")
        endpoint = status["endpoint"]
        model = xinfctl(env, "launch", "-n", "echo", "-r", "1")
        socket_path = model["replicas"][0]["socket"]
        direct = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket_path, limit=0))
        daemon = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        try:
            kw = {"seconds": args.seconds, "concurrency": args.concurrency, "stream": args.stream}
            await load("warm-up", daemon, f"{endpoint}/v1/chat/completions", **{**kw, "seconds": 1.0})
            base = await load(
                "direct to worker socket", direct, "http://worker/v1/chat/completions", **kw
            )
            via = await load("through xinfd", daemon, f"{endpoint}/v1/chat/completions", **kw)
        finally:
            await direct.close()
            await daemon.close()
    mode = "streaming" if args.stream else "plain"
    print(
        f"\nechoed chat completions ({mode}), {args.concurrency} concurrent clients, {args.seconds:.0f}s each, "
        f"{os.cpu_count()} cores\n"
    )
    print(f"{'path':<26}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for r in (base, via):
        print(f"{r.name:<26}{r.rps:>10.1f}{r.pct(0.5):>10.2f}{r.pct(0.99):>10.2f}{r.errors:>8}")
    print(
        f"{'ratio (xinfd / direct)':<26}{via.rps / base.rps:>10.2f}"
        f"{via.pct(0.5) / base.pct(0.5):>10.2f}{via.pct(0.99) / base.pct(0.99):>10.2f}"
    )
    print(
        f"\nmean latency direct {statistics.mean(base.latencies) * 1000:.2f} ms, "
        f"through xinfd {statistics.mean(via.latencies) * 1000:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--stream", action="store_true")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
