"""Load test: 64 concurrent streaming clients through 2 echo replicas vs the workers directly.

Every stream must end with ``data: [DONE]``; anything else (a non-200, a cut stream, a client error) counts as
an error, and the run exits 1 if there is any. Both paths hit the same two replicas in the same run (the
direct clients are split evenly over the two worker sockets, as the daemon's router would), so the ratio
isolates what the daemon adds: HTTP parsing, access checks, validation, routing and the SSE relay.
Afterwards the daemon's ``/metrics`` must show no request left in flight.

    python benchmarks/load.py [--seconds 60] [--concurrency 64] [--words 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from _daemon import running_daemon, xinfctl


@dataclass
class Result:
    name: str
    seconds: float = 0.0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    first_token: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float, values: list[float] | None = None) -> float:
        ordered = sorted(self.latencies if values is None else values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


async def one_stream(session: aiohttp.ClientSession, url: str, body: dict[str, Any], result: Result) -> None:
    started = time.perf_counter()
    first: float | None = None
    tail = b""
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                await resp.read()
                result.errors += 1
                return
            async for chunk in resp.content.iter_any():
                if first is None and b"data: {" in chunk:
                    first = time.perf_counter() - started
                tail = (tail + chunk)[-64:]
    except (aiohttp.ClientError, TimeoutError):
        result.errors += 1
        return
    if not tail.rstrip().endswith(b"data: [DONE]"):
        result.errors += 1
        return
    result.latencies.append(time.perf_counter() - started)
    if first is not None:
        result.first_token.append(first)


async def load(
    name: str,
    targets: list[tuple[aiohttp.ClientSession, str]],
    *,
    seconds: float,
    concurrency: int,
    words: int,
) -> Result:
    prompt = " ".join(f"word{i}" for i in range(words))
    body = {"model": "echo", "messages": [{"role": "user", "content": prompt}], "stream": True}
    result = Result(name)
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession, url: str) -> None:
        while time.perf_counter() < deadline:
            await one_stream(session, url, body, result)

    started = time.perf_counter()
    await asyncio.gather(*(client(*targets[i % len(targets)]) for i in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


async def in_flight(session: aiohttp.ClientSession, endpoint: str) -> float:
    async with session.get(f"{endpoint}/metrics") as resp:
        text = await resp.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("xinfd_requests_in_flight{")
    )


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="xinfd-load-") as tmp, running_daemon(Path(tmp)) as env:
        endpoint = xinfctl(env, "status")["endpoint"]
        model = xinfctl(env, "launch", "-n", "echo", "-r", "2")
        sockets = [r["socket"] for r in model["replicas"]]
        direct = [aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=s, limit=0)) for s in sockets]
        daemon = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        try:
            kw = {"seconds": args.seconds, "concurrency": args.concurrency, "words": args.words}
            url = f"{endpoint}/v1/chat/completions"
            await load("warm-up", [(daemon, url)], **{**kw, "seconds": min(2.0, args.seconds)})
            base = await load(
                "direct to 2 workers", [(s, "http://worker/v1/chat/completions") for s in direct], **kw
            )
            via = await load("through xinfd", [(daemon, url)], **kw)
            left = await in_flight(daemon, endpoint)
        finally:
            for session in [*direct, daemon]:
                await session.close()
    print(
        f"\n{args.concurrency} concurrent streaming chat clients, {args.seconds:.0f}s per path, echo with 2 "
        f"replicas, {args.words} tokens per answer, {os.cpu_count()} cores\n"
    )
    print(
        f"{'path':<22}{'streams/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'TTFT p50':>10}{'TTFT p99':>10}"
        f"{'streams':>9}{'errors':>8}"
    )
    for r in (base, via):
        print(
            f"{r.name:<22}{r.rps:>10.1f}{r.pct(0.5):>9.2f}{r.pct(0.99):>9.2f}"
            f"{r.pct(0.5, r.first_token):>10.2f}"
            f"{r.pct(0.99, r.first_token):>10.2f}{len(r.latencies):>9}{r.errors:>8}"
        )
    print(
        f"{'ratio xinfd / direct':<22}{via.rps / base.rps:>10.2f}{via.pct(0.5) / base.pct(0.5):>9.2f}"
        f"{via.pct(0.99) / base.pct(0.99):>9.2f}"
    )
    print(f"\nrequests left in flight after the run (daemon /metrics): {left:g}")
    return 0 if base.errors == via.errors == 0 and left == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="per path (default 60)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--words", type=int, default=16, help="tokens the echo model streams per answer")
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
