"""Metric bookkeeping: stream statistics and the ModelManager collector."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from xinfd.api.exposition import render
from xinfd.api.metrics import Metrics, StreamStats
from xinfd.replicas import ReplicaState
from xinfd.types import GpuInfo


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def chat_chunk(content: str | None, finish: str | None = None, role: bool = False) -> bytes:
    delta: dict[str, Any] = (
        {"role": "assistant", "content": ""} if role else ({"content": content} if content else {})
    )
    return frame({"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})


def test_stream_stats_time_to_first_token_gaps_and_tokens() -> None:
    metrics = Metrics()
    stats = StreamStats(metrics, "m", "chat/completions", started=100.0)
    stats.chunk(chat_chunk(None, role=True), 100.5)  # the role chunk is not a token
    stats.chunk(chat_chunk("a"), 101.0)
    stats.chunk(chat_chunk("b") + chat_chunk("c"), 101.25)  # two deltas in one read
    stats.chunk(chat_chunk(None, finish="stop") + b"data: [DONE]\n\n", 101.3)
    stats.finish()
    assert (
        value(metrics, "xinfd_time_to_first_token_seconds_sum", model="m", endpoint="chat/completions") == 1.0
    )
    assert value(metrics, "xinfd_inter_token_latency_seconds_count", model="m") == 1
    assert value(metrics, "xinfd_completion_tokens_total", model="m") == 3


def test_stream_stats_prefers_the_usage_chunk() -> None:
    metrics = Metrics()
    stats = StreamStats(metrics, "m", "completions", started=0.0)
    stats.chunk(frame({"choices": [{"index": 0, "text": "a", "finish_reason": None}], "usage": None}), 1.0)
    stats.chunk(frame({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5}}), 2.0)
    stats.abort("slow_reader")
    assert value(metrics, "xinfd_prompt_tokens_total", model="m") == 7
    assert value(metrics, "xinfd_completion_tokens_total", model="m") == 5
    assert value(metrics, "xinfd_aborted_requests_total", model="m", reason="slow_reader") == 1


def test_stream_stats_count_streamed_images_however_the_reads_split() -> None:
    """A streamed image request counts its completed images (not the partial ones) in xinfd_images_generated,
    as a whole answer does, even when an event line is split between two reads of the relay."""
    from xinfd.image_protocol import stream_event

    progress = stream_event("image_generation", "progress", {"step": 1, "steps": 2})
    partial = stream_event("image_generation", "partial_image", {"b64_json": "AAAA", "partial_image_index": 0})
    done = [stream_event("image_generation", "completed", {"b64_json": "QUJD" * 50, "index": i}) for i in (0, 1)]
    body = progress + partial + done[0] + done[1] + b"data: [DONE]\n\n"
    for cut in range(1, len(body), 7):
        metrics = Metrics()
        stats = StreamStats(metrics, "sd", "images/generations", started=0.0)
        stats.chunk(body[:cut], 1.0)
        stats.chunk(body[cut:], 2.0)
        stats.finish()
        stats.finish()  # reached twice on some paths (abort, then the caller): counted once
        assert value(metrics, "xinfd_images_generated_total", model="sd") == 2, cut
        assert value(metrics, "xinfd_image_seconds_per_image_count", model="sd") == 1
    edits = Metrics()
    stats = StreamStats(edits, "sd", "images/edits", started=0.0)
    stats.chunk(stream_event("image_edit", "completed", {"b64_json": "QUJD", "index": 0}), 1.0)
    stats.abort("slow_reader")
    assert value(edits, "xinfd_images_generated_total", model="sd") == 1
    assert value(edits, "xinfd_completion_tokens_total", model="sd") is None


def test_usage_of_whole_responses_and_venv_builds() -> None:
    metrics = Metrics()
    metrics.usage("m", json.dumps({"usage": {"prompt_tokens": 4, "completion_tokens": 2}}).encode())
    metrics.usage("m", b'not json with "usage"')
    metrics.venv_build(12.5, ok=True)
    metrics.venv_build(3.0, ok=False)
    assert value(metrics, "xinfd_prompt_tokens_total", model="m") == 4
    assert value(metrics, "xinfd_venv_builds_total", result="failed") == 1
    assert value(metrics, "xinfd_venv_build_duration_seconds_sum") == 15.5


def test_collector_reads_replicas_queue_slots_and_gpu_memory() -> None:
    replicas = [
        SimpleNamespace(
            index=0, state=ReplicaState.READY, restarts=0, outstanding=2, pid=111, gpu_indices=(1,)
        ),
        SimpleNamespace(
            index=1, state=ReplicaState.BACKOFF, restarts=3, outstanding=0, pid=None, gpu_indices=()
        ),
    ]
    model = SimpleNamespace(replicas=replicas, router=SimpleNamespace(waiting=5))
    gpus = (GpuInfo(index=0, name="A", memory_mb=1), GpuInfo(index=1, name="A", memory_mb=1))
    slots = SimpleNamespace(gpus=gpus, holders=lambda i: ["m-r0"] if i == 1 else [])
    manager = SimpleNamespace(models={"m": model}, slots=slots, platform=SimpleNamespace(gpus=gpus))
    metrics = Metrics()
    metrics.watch_manager(manager, gpu_memory=lambda: {111: 2 * 1024**3})
    assert value(metrics, "xinfd_replica_state", model="m", replica="0", state="READY") == 1
    assert value(metrics, "xinfd_replica_state", model="m", replica="1", state="READY") == 0
    assert value(metrics, "xinfd_replica_state", model="m", replica="1", state="BACKOFF") == 1
    assert value(metrics, "xinfd_replica_restarts", model="m", replica="1") == 3
    assert value(metrics, "xinfd_requests_queued", model="m") == 5
    assert value(metrics, "xinfd_replica_requests_outstanding", model="m", replica="0") == 2
    assert value(metrics, "xinfd_replica_gpu_memory_bytes", model="m", replica="0", gpu="1") == 2 * 1024**3
    assert value(metrics, "xinfd_gpu_slots") == 2 and value(metrics, "xinfd_gpu_slots_used") == 1
    # A model that is gone is simply not reported any more (no stale series).
    manager.models.clear()
    assert b'model="m"' not in render(metrics.registry)


def test_a_failing_gpu_query_does_not_break_the_scrape() -> None:
    def broken() -> dict[int, int]:
        raise RuntimeError("NVML driver mismatch")

    manager = SimpleNamespace(models={}, slots=None, platform=SimpleNamespace(gpus=()))
    metrics = Metrics()
    metrics.watch_manager(manager, gpu_memory=broken)
    assert value(metrics, "xinfd_gpu_slots") == 0


def test_the_readmes_metric_names_are_the_ones_exposed() -> None:
    """Every metric the README's Metrics section names is one the daemon declares (counters as ``_total``)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    readme = root.joinpath("README.md").read_text()
    section = readme[readme.index("## Metrics") : readme.index("## Container")]
    named = set(re.findall(r"`((?:xinfd_|vllm:)[a-z_:]+)", section))
    source = "".join((root / "xinfd" / "api" / f).read_text() for f in ("metrics.py", "pool_metrics.py"))
    declared = set(re.findall(r'"((?:xinfd_|vllm:)[a-z_:]+)"', source))
    counters = {name + "_total" for name in declared}
    assert len(named) > 15 and named <= declared | counters, named - declared - counters
