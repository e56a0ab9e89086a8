"""Replicas sharing the CPU: 8 clients against 1 and 2 replicas of a tiny random Llama with the daemon's
default threads, and the launch time of 1 and 2 replicas, against in-process ``generate()`` measured in the
same run.

The in-process rows are the limit for one sequence at a time (torch with one thread, the ratios' base, and
with every core); the daemon rows
leave the thread counts to xinfd (no ``OMP_NUM_THREADS`` in its environment), which is what an operator gets by
default. Before the CPU thread budget each replica started torch with one thread per core, so two replicas on
two cores oversubscribed the machine. Targets: 2 replicas >= 1 replica's req/s; launch of 1 / 2 replicas
<= 1.5 s / 2 s. The machine's load average is printed first: figures taken on a busy machine say so.

    python benchmarks/cpu_budget.py [--tokens 16] [--clients 8] [--seconds 15]
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
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = "the quick brown fox jumps over the lazy dog. hello world, how are you today?"


def in_process(location: str, tokens: int, seconds: float, threads: int) -> float:
    """Requests/s of greedy ``generate()`` of one sequence after another with ``threads`` torch threads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    done = 0
    with torch.no_grad():
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)  # warm-up
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            done += 1
        return done / (time.perf_counter() - started)


async def load(url: str, tokens: int, clients: int, seconds: float) -> tuple[float, float]:
    """(requests/s, p50 latency in ms) of ``clients`` back-to-back non-streamed completions for ``seconds``."""
    body = {"model": "bench", "prompt": PROMPT, "max_tokens": tokens, "temperature": 0}
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with session.post(url, json=body) as resp:
                    resp.raise_for_status()
                    await resp.read()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return len(latencies) / elapsed, 1000 * latencies[len(latencies) // 2] if latencies else float("nan")


def launch(env: dict[str, str], replicas: int) -> float:
    started = time.perf_counter()
    xinfctl(env, "launch", "-n", "bench", "-e", "transformers", "-u", "bench", "-r", str(replicas))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tokens", type=int, default=16, help="completion tokens per request")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15, help="length of each load run")
    args = parser.parse_args()
    print(f"load average before the run: {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"on {len(os.sched_getaffinity(0))} cores" + (" (not quiet)" if os.getloadavg()[0] > 0.5 else ""))
    with tempfile.TemporaryDirectory(prefix="xinfd-cpu-budget-") as tmp:
        from tests.unit.engines.tiny_models import build_tiny_llama

        location = str(build_tiny_llama(Path(tmp) / "model", layers=2, hidden=64))
        cores = len(os.sched_getaffinity(0))
        limit = in_process(location, args.tokens, args.seconds, 1)
        all_cores = in_process(location, args.tokens, args.seconds, cores)
        rows: list[tuple[str, float, float]] = []
        launches: dict[int, float] = {}
        with running_daemon(Path(tmp) / "home", one_thread=False) as env:
            spec = Path(tmp) / "bench.json"
            spec.write_text(json.dumps({"name": "bench", "abilities": ["generate"], "engines": ["transformers"],
                                        "context_length": 4096, "extra": {"model_path": location}}))
            xinfctl(env, "register", "--file", str(spec))
            url = xinfctl(env, "status")["endpoint"] + "/v1/completions"
            for replicas in (1, 2):
                launches[replicas] = launch(env, replicas)
                asyncio.run(load(url, args.tokens, 2, 2))  # warm-up
                rate, p50 = asyncio.run(load(url, args.tokens, args.clients, args.seconds))
                rows.append((f"daemon, {replicas} replica(s), {args.clients} clients", rate, p50))
                seq_rate, seq_p50 = asyncio.run(load(url, args.tokens, 1, args.seconds / 2))
                rows.append((f"daemon, {replicas} replica(s), sequential", seq_rate, seq_p50))
                xinfctl(env, "terminate", "bench")
    print(f"\ntiny random Llama (2x64), {args.tokens} tokens/request, {os.cpu_count()} cores, "
          "daemon threads: its default\n")
    print(f"{'run':<40}{'req/s':>9}{'x in-process':>14}{'p50 ms':>9}")
    print(f"{'in-process generate(), 1 thread':<40}{limit:>9.1f}{1.0:>14.2f}{1000 / limit:>9.1f}")
    print(f"{f'in-process generate(), {cores} threads':<40}{all_cores:>9.1f}{all_cores / limit:>14.2f}"
          f"{1000 / all_cores:>9.1f}")
    for name, rate, p50 in rows:
        print(f"{name:<40}{rate:>9.1f}{rate / limit:>14.2f}{p50:>9.1f}")
    two_vs_one = rows[2][1] / rows[0][1]
    print(f"\n2 replicas / 1 replica at {args.clients} clients: {two_vs_one:.2f}x (target >= 1.00)")
    print(f"launch: 1 replica {launches[1]:.2f} s (target <= 1.5), 2 replicas {launches[2]:.2f} s (target <= 2)")


if __name__ == "__main__":
    main()
