"""The balancer hop: requests/s and p50/p99 through HAProxy (the shipped contrib/haproxy config) vs one daemon.

In one run, on this machine: the same echo model straight to one xinfd daemon, through HAProxy to that one
daemon (the cost of the hop alone: body buffering, JSON routing, a second HTTP relay), and through HAProxy to
two daemons (what spreading buys when the host has cores to spare). Needs Debian's haproxy. Run from a
checkout with xinfd and the echo plugin installed:

    python benchmarks/balancer.py [--seconds 10] [--concurrency 16] [--stream]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from proxy import Result  # noqa: E402  # the benchmarks' shared result and load client
from proxy import load as load_with  # noqa: E402

from tests.integration.balancer import Haproxy, free_port, haproxy_binary  # noqa: E402  # needs REPO on the path
from tests.integration.conftest import Daemon, daemon_env  # noqa: E402


async def load(name: str, url: str, *, seconds: float, concurrency: int, stream: bool) -> Result:
    """The proxy benchmark's load client (one for every benchmark), aimed at a daemon or a balancer."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        return await load_with(
            name, session, f"{url}/v1/chat/completions", seconds=seconds, concurrency=concurrency, stream=stream
        )


def start_daemon(root: Path, name: str) -> tuple[Daemon, int]:
    home = root / name
    home.mkdir()
    env = daemon_env(home, {"XINFD_DAEMON_NAME": name, "XINFD_LOG_LEVEL": "WARNING"})
    daemon = Daemon(home=home, socket=home / "xinfd.sock", env=env)
    port = free_port()
    daemon.start("--port", str(port))
    daemon.xinfctl("launch", "-n", "echo", "-r", "1", "--json")
    return daemon, port


async def run(args: argparse.Namespace) -> None:
    binary = haproxy_binary()
    if binary is None:
        raise SystemExit("haproxy is not installed (Debian: apt-get install haproxy)")
    daemons: list[Daemon] = []
    balancers: list[Haproxy] = []
    with tempfile.TemporaryDirectory(prefix="xinfd-bench-lb-") as tmp:
        root = Path(tmp)
        try:
            (d1, p1), (d2, p2) = start_daemon(root, "d1"), start_daemon(root, "d2")
            daemons += [d1, d2]
            one = Haproxy(workdir=root / "lb1", servers={"d1": f"127.0.0.1:{p1}"}, check_inter="1s")
            two = Haproxy(
                workdir=root / "lb2",
                servers={"d1": f"127.0.0.1:{p1}", "d2": f"127.0.0.1:{p2}"},
                check_inter="1s",
            )
            for lb in (one, two):
                balancers.append(lb.start(binary))
                for server in lb.servers:
                    lb.wait_state("xinfd_model_echo", server, "UP")
            kw = {"seconds": args.seconds, "concurrency": args.concurrency, "stream": args.stream}
            await load("warm-up", two.url, **{**kw, "seconds": 1.0})
            results = [
                await load("one daemon, direct", d1.endpoint, **kw),
                await load("HAProxy -> that daemon", one.url, **kw),
                await load("HAProxy -> two daemons", two.url, **kw),
            ]
        finally:
            for lb in balancers:
                lb.stop()
            for daemon in daemons:
                if daemon.proc is not None and daemon.proc.poll() is None:
                    daemon.proc.send_signal(signal.SIGTERM)
                    daemon.proc.wait(timeout=60)
    base = results[0]
    mode = "streaming" if args.stream else "plain"
    print(
        f"\nechoed chat completions ({mode}), {args.concurrency} concurrent clients, {args.seconds:.0f}s each, "
        f"{os.cpu_count()} cores, one echo replica per daemon\n"
    )
    print(f"{'path':<26}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'req/s ratio':>13}{'p50 ratio':>11}")
    for r in results:
        print(
            f"{r.name:<26}{r.rps:>10.1f}{r.pct(0.5):>10.2f}{r.pct(0.99):>10.2f}{r.errors:>8}"
            f"{r.rps / base.rps:>13.2f}{r.pct(0.5) / base.pct(0.5):>11.2f}"
        )
    hop = results[1].pct(0.5) - base.pct(0.5)
    print(f"\nadded p50 latency of the HAProxy hop: {hop:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--stream", action="store_true")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
