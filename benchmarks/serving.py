"""Serving close to the hardware, in one run: the whole table of issue 13 on a tiny random Qwen2, each xinfd
figure beside a baseline measured in the same run.

Rows (baseline -> xinfd, target):

* sequential requests, p50 ms, 1 thread: in-process greedy ``generate()`` -> xinfd, 1 replica (<= 1.1x);
* 8 clients, tokens/s, 1 thread: one in-process batch-8 ``generate()`` -> xinfd, 1 replica (>= 0.8x); the same
  with streamed requests beside it, without a target;
* 8 clients, tokens/s, default threads: xinfd 1 replica -> xinfd 2 replicas on the same cores (>= 1.0x: two
  replicas must never fall below one);
* launch of 1 and 2 replicas, s: the in-process load (import + from_pretrained in a fresh interpreter) -> xinfd
  ``xinfctl launch`` until READY (<= 1.5 s / <= 2 s), with ``preload_engines = ["transformers"]`` (the fork
  server imported torch and transformers when the daemon started; ``xinfd.forkserver``). The first launch of a
  daemon without it (its fork server imports them then) is shown beside, without a target;
* memory, MiB: the in-process process after its runs -> the replica after its load runs, plus the fork server
  it was forked from, in PSS (pages they share counted once) (<= 1.15x);
* idle daemon RSS and start -> ``/health`` 200: a bare ``asyncio`` + ``aiohttp.web`` interpreter -> ``xinfd``
  (<= 40 MiB, <= 0.3 s), median of ``--starts`` (``benchmarks/startup.py``'s measurement);
* venv build: raw ``uv venv`` + ``uv pip install`` -> xinfd's build of the same spec with skip-installed off
  (<= 1.2x), warm uv cache, median of 5 interleaved rounds (one uv install varies by 0.1 s from run to run;
  ``benchmarks/venv.py`` has the phase breakdown).

Requests are greedy (``temperature`` 0) completions of one fixed prompt, so every request produces the same
tokens on both sides; tokens/s are counted from what each side reports (``usage`` for xinfd). Before measuring
it waits up to ``--quiet-wait`` seconds for the 1-minute load average to fall below ``--quiet-load`` and says
in the header whether the machine was quiet; figures from a busy machine are indicative only.

    python benchmarks/serving.py [--tokens 16] [--seconds 10] [--starts 5] [--no-venv]
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import aiohttp
from _daemon import running_daemon, xinfctl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPT = "the quick brown fox jumps over the lazy dog. hello world, how are you today?"
MODEL = "bench"


@dataclass(frozen=True)
class Row:
    """One line of the table: a baseline, xinfd's figure and the target on their ratio."""

    measure: str
    baseline: float
    value: float
    target: str  # ">= 0.8" / "<= 1.1" on value / baseline, or "<= 40" on value alone (absolute: baseline 0)
    absolute: bool = False
    informational: bool = False  # shown for context, no target

    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("nan")

    def met(self) -> bool:
        if self.informational:
            return True
        op, bound = self.target.split()
        got = self.value if self.absolute else self.ratio()
        return got >= float(bound) if op == ">=" else got <= float(bound)


def sibling(name: str) -> ModuleType:
    """A benchmark module of this folder by file (``venv.py`` must not be imported as ``venv``: the stdlib's)."""
    spec = importlib.util.spec_from_file_location(f"xinfd_benchmark_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wait_for_quiet(limit: float, seconds: float) -> str:
    """Wait until the 1-minute load average is under ``limit`` (at most ``seconds``); the header's words."""
    deadline = time.monotonic() + seconds
    while os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        time.sleep(2)
    load = os.getloadavg()[0]
    quiet = "quiet" if load < limit else f"NOT quiet (still {load:.2f} >= {limit} after {seconds:g}s)"
    return f"load average {load:.2f} on {len(os.sched_getaffinity(0))} cores: {quiet}"


# -- in-process baselines, each in a fresh interpreter so its memory and import time are its own -----------------

_IN_PROCESS = r"""
import json, statistics, sys, time
started = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
location, tokens, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
tokenizer = AutoTokenizer.from_pretrained(location)
model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32).eval()
load_s = time.perf_counter() - started
ids = torch.tensor([tokenizer(sys.argv[4])["input_ids"]])

def generate(batch):
    inputs = ids.repeat(batch, 1)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=tokens,
                             do_sample=False, pad_token_id=0)
    return time.perf_counter() - t0, out.shape[1] - inputs.shape[1]

generate(1)
one = [generate(1) for _ in range(repeats)]
eight = [generate(8) for _ in range(max(3, repeats // 4))]
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")) / 1024
print(json.dumps({"load_s": load_s, "p50_ms": 1000 * statistics.median(t for t, _ in one),
                  "tokens": one[0][1], "batch8_tokens_s": max(8 * n / t for t, n in eight), "rss_mib": rss}))
"""


def tiny_model(path: Path) -> str:
    """``batching.build_tiny_qwen2`` in a child interpreter: this process must not hold torch, or every process
    the daemon code it runs starts (the venv row's builds fork with a ``preexec_fn``) copies torch's mappings,
    a cost the daemon itself (40 MiB) does not have."""
    code = ("import sys; from pathlib import Path; from batching import build_tiny_qwen2; "
            "print(build_tiny_qwen2(Path(sys.argv[1])))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=Path(__file__).parent, check=True,
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)])})
    return out.stdout.strip().splitlines()[-1]


def in_process(location: str, tokens: int, repeats: int) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", _IN_PROCESS, location, str(tokens), str(repeats), PROMPT],
                         env=env, check=True, capture_output=True, text=True, timeout=600)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# -- through the daemon ------------------------------------------------------------------------------------------

async def load(url: str, tokens: int, clients: int, seconds: float, *, stream: bool = False) -> tuple[float, float]:
    """(completion tokens/s, p50 request ms) of ``clients`` back-to-back completions, whole or streamed (then
    counted from the stream's closing ``usage`` chunk)."""
    body: dict[str, object] = {"model": MODEL, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    latencies: list[float] = []
    generated = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal generated
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with session.post(url, json=body) as resp:
                    resp.raise_for_status()
                    if stream:
                        async for line in resp.content:
                            if line.startswith(b"data: {") and b'"usage":{' in line:
                                generated += (json.loads(line[6:]).get("usage") or {}).get("completion_tokens", 0)
                    else:
                        generated += (await resp.json())["usage"]["completion_tokens"]
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return generated / elapsed, 1000 * statistics.median(latencies)


def launch(env: dict[str, str], replicas: int) -> float:
    """Seconds from ``xinfctl launch`` to its return (every replica READY)."""
    args = ["launch", "-n", MODEL, "-e", "transformers", "-u", MODEL, "-r", str(replicas)]
    started = time.perf_counter()
    xinfctl(env, *args)
    return time.perf_counter() - started


def pss_mib(pid: int) -> float:
    """Proportional set size: resident pages, each shared one divided among the processes that map it."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss for pid {pid}")


def replica_memory_mib(env: dict[str, str]) -> float:
    """PSS of the model's replica plus that of the fork server it was forked from (if it was)."""
    models = xinfctl(env, "list")
    [pid] = [r["pid"] for m in models if m["model_uid"] == MODEL for r in m["replicas"]]
    servers = {s["pid"] for s in xinfctl(env, "status").get("fork_servers", [])}
    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return pss_mib(pid) + (pss_mib(parent) if parent in servers else 0.0)


def wait_for_fork_server(env: dict[str, str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not xinfctl(env, "status").get("fork_servers"):
        if time.monotonic() > deadline:
            raise SystemExit("the preloaded fork server did not start (see the daemon's log)")
        time.sleep(0.1)


def register(env: dict[str, str], tmp: Path, location: str) -> str:
    spec = tmp / "bench.json"
    spec.write_text(json.dumps({"name": MODEL, "abilities": ["generate"], "engines": ["transformers"],
                                "context_length": 1024, "extra": {"model_path": location}}))
    xinfctl(env, "register", "--file", str(spec))
    endpoint: str = xinfctl(env, "status")["endpoint"]
    return endpoint + "/v1/completions"


def serving_rows(location: str, tmp: Path, args: argparse.Namespace, base: dict[str, float]) -> list[Row]:
    rows: list[Row] = []
    with running_daemon(tmp / "home-1t") as env:  # every replica with one thread
        url = register(env, tmp, location)
        cold = launch(env, 1)  # the fork server starts with this launch
        asyncio.run(load(url, args.tokens, 2, 2))  # warm-up
        _, p50 = asyncio.run(load(url, args.tokens, 1, args.seconds))
        rate8, _ = asyncio.run(load(url, args.tokens, 8, args.seconds))
        rows.append(Row("sequential p50 ms, 1 thread", base["p50_ms"], p50, "<= 1.1"))
        rows.append(Row("8 clients tokens/s, 1 thread", base["batch8_tokens_s"], rate8, ">= 0.8"))
        streamed8, _ = asyncio.run(load(url, args.tokens, 8, args.seconds, stream=True))
        rows.append(Row("8 streaming clients tokens/s, 1 thread", base["batch8_tokens_s"], streamed8, "-",
                        informational=True))
        rows.append(Row("memory MiB, 1 replica + its fork server (PSS)", base["rss_mib"], replica_memory_mib(env),
                        "<= 1.15"))
    preload = {"XINFD_PRELOAD_ENGINES": "transformers"}
    with running_daemon(tmp / "home-default", one_thread=False, settings=preload) as env:  # the daemon's budget
        url = register(env, tmp, location)
        wait_for_fork_server(env)
        launches = {}
        rates = {}
        for replicas in (1, 2):
            launches[replicas] = launch(env, replicas)
            asyncio.run(load(url, args.tokens, 2, 2))
            rates[replicas], _ = asyncio.run(load(url, args.tokens, 8, args.seconds))
            xinfctl(env, "terminate", MODEL)
        rows.append(Row("8 clients tokens/s, default threads: 1 -> 2 replicas", rates[1], rates[2], ">= 1.0"))
        rows.append(Row("launch s, 1 replica, preloaded (baseline: in-process load)", base["load_s"], launches[1],
                        "<= 1.5", absolute=True))
        rows.append(Row("launch s, 2 replicas, preloaded (baseline: in-process load)", base["load_s"],
                        launches[2], "<= 2.0", absolute=True))
    rows.append(Row("launch s, first launch without preload_engines", base["load_s"], cold, "-", absolute=True,
                    informational=True))
    return rows


# -- the idle daemon (benchmarks/startup.py measures it; its functions are reused here) --------------------------

def idle_rows(starts: int) -> list[Row]:
    startup = sibling("startup")
    compileall.compile_dir(REPO / "xinfd", quiet=1)  # warm bytecode, as an installed wheel has
    floor_s, floor_mib, _ = startup.median_of(starts, lambda: startup.script_start(startup.FLOOR))
    daemon_s, daemon_mib, _ = startup.median_of(starts, lambda: startup.daemon_start(1.0))
    return [
        Row("idle daemon RSS MiB (baseline: bare aiohttp.web)", floor_mib, daemon_mib, "<= 40", absolute=True),
        Row("start -> /health 200 s (baseline: bare aiohttp.web)", floor_s, daemon_s, "<= 0.3", absolute=True),
    ]


# -- the venv build ----------------------------------------------------------------------------------------------

def venv_row(tmp: Path, packages: list[str], rounds: int) -> Row:
    bench = sibling("venv")
    build_once, raw_uv = bench.build_once, bench.raw_uv
    from xinfd.venvs.builder import Uv
    from xinfd.venvs.pipconfig import PipConfig

    async def measure() -> tuple[float, float]:
        uv = Uv(cache_dir=tmp / "uv-cache")
        pip = PipConfig()
        index = await pip.options()
        index_args = (index.uv_args() + ["--index-strategy", "unsafe-best-match"]
                      + [a for c in index.constraints for a in ("--constraint", c)])
        await uv.version()
        await build_once(tmp, "venv-warm", packages, skip=False, uv=uv, pip=pip)  # warm uv's cache
        raw, ours = [], []
        for n in range(rounds):
            raw.append(raw_uv(tmp / f"venv-raw-{n}", packages, uv, index_args)[0])
            ours.append((await build_once(tmp, f"venv-{n}", packages, skip=False, uv=uv, pip=pip))[0])
        return statistics.median(raw), statistics.median(ours)

    raw, ours = asyncio.run(measure())
    return Row(f"venv build s ({' '.join(packages)}), skip-installed off vs raw uv", raw, ours, "<= 1.2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tokens", type=int, default=16, help="max_tokens per request")
    parser.add_argument("--seconds", type=float, default=10, help="length of each load run")
    parser.add_argument("--repeats", type=int, default=20, help="in-process sequential generations")
    parser.add_argument("--starts", type=int, default=5, help="daemon starts for the idle rows")
    parser.add_argument("--quiet-load", type=float, default=0.5)
    parser.add_argument("--quiet-wait", type=float, default=120)
    parser.add_argument("--no-venv", action="store_true", help="skip the venv row (it needs the package index)")
    parser.add_argument("--venv-package", action="append", help="the venv row's spec (default transformers==4.37.2)")
    args = parser.parse_args()
    header = wait_for_quiet(args.quiet_load, args.quiet_wait)
    with tempfile.TemporaryDirectory(prefix="xinfd-serving-bench-") as name:
        tmp = Path(name)
        location = tiny_model(tmp / "model")
        base = in_process(location, args.tokens, args.repeats)
        rows = serving_rows(location, tmp, args, base)
        rows += idle_rows(args.starts)
        if not args.no_venv:
            rows.append(venv_row(tmp, args.venv_package or ["transformers==4.37.2"], rounds=5))
    print(f"\n{header}; tiny random Qwen2 (2x64), greedy, max_tokens {args.tokens} "
          f"({int(base['tokens'])} generated), {args.seconds:g}s per load run\n")
    print(f"{'measure':<62}{'baseline':>10}{'xinfd':>10}{'ratio':>8}{'target':>10}{'met':>5}")
    for row in rows:
        target = row.target + ("" if row.absolute or row.informational else "x")
        met = "-" if row.informational else "yes" if row.met() else "NO"
        print(f"{row.measure:<62}{row.baseline:>10.2f}{row.value:>10.2f}{row.ratio():>8.2f}{target:>10}{met:>5}")


if __name__ == "__main__":
    main()
