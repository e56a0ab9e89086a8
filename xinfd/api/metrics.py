"""Prometheus metrics of the daemon (issue 6), exposed at ``/metrics`` by ``xinfd.api.exposition``.

A per-daemon ``Registry`` keeps tests and several daemons in one process apart.
Labels are bounded: model uid, endpoint, status code, replica index, a fixed set of reasons — never request
data. Two kinds of metric live here:

* event metrics (requests, latency, time to first token, inter-token latency, tokens, rejections, aborts,
  venv builds), updated by the code that sees the event;
* state metrics (replica states and restarts, queued requests, GPU slots, per-replica GPU memory), read from
  the ``ModelManager`` at scrape time by ``ManagerCollector`` — so they can never drift from the truth, and a
  model that is gone simply stops being reported.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from xinfd.api.exposition import Collector, Counter, Gauge, GaugeFamily, Histogram, Registry
from xinfd.api.pool_metrics import PoolProtocolCollector

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
REPLICA_STATES = ("STARTING", "READY", "BACKOFF", "STOPPING", "STOPPED", "FAILED")
ABORT_REASONS = ("client_disconnect", "slow_reader", "upstream_error")


@dataclass(slots=True)
class Metrics:
    registry: Registry = field(default_factory=Registry)
    requests: Counter = field(init=False)
    latency: Histogram = field(init=False)
    in_flight: Gauge = field(init=False)
    ttft: Histogram = field(init=False)
    inter_token: Histogram = field(init=False)
    prompt_tokens: Counter = field(init=False)
    completion_tokens: Counter = field(init=False)
    rejections: Counter = field(init=False)
    aborts: Counter = field(init=False)
    venv_builds: Counter = field(init=False)
    venv_build_seconds: Histogram = field(init=False)
    images: Counter = field(init=False)
    image_seconds: Histogram = field(init=False)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "xinfd_requests",
            "Inference requests by model, endpoint and status",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "xinfd_request_duration_seconds",
            "Inference request latency (to the last byte)",
            ["model", "endpoint"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.in_flight = Gauge(
            "xinfd_requests_in_flight",
            "Inference requests being served (queued included)",
            ["model"],
            registry=r,
        )
        self.ttft = Histogram(
            "xinfd_time_to_first_token_seconds",
            "Streamed requests: time from arrival to the first generated token",
            ["model", "endpoint"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.inter_token = Histogram(
            "xinfd_inter_token_latency_seconds",
            "Streamed requests: time between consecutive chunks of tokens",
            ["model"],
            registry=r,
            buckets=_TOKEN_GAP_BUCKETS,
        )
        self.prompt_tokens = Counter(
            "xinfd_prompt_tokens", "Prompt tokens processed (from the replica's usage)", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "xinfd_completion_tokens",
            "Completion tokens generated (usage when the replica reports it, else one per streamed delta)",
            ["model"],
            registry=r,
        )
        self.rejections = Counter(
            "xinfd_rejected_requests",
            "Requests refused for capacity (429) or state (503)",
            ["model", "status"],
            registry=r,
        )
        self.aborts = Counter(
            "xinfd_aborted_requests",
            "Requests ended early: client disconnect, slow reader cut, replica failure",
            ["model", "reason"],
            registry=r,
        )
        self.venv_builds = Counter("xinfd_venv_builds", "Model venv builds by result", ["result"], registry=r)
        self.venv_build_seconds = Histogram(
            "xinfd_venv_build_duration_seconds",
            "Model venv build time",
            registry=r,
            buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800),
        )
        for result in ("ok", "failed"):
            self.venv_builds.labels(result)
        self.images = Counter(
            "xinfd_images_generated", "Images generated (generations and edits, whole or streamed)", ["model"],
            registry=r,
        )
        self.image_seconds = Histogram(
            "xinfd_image_seconds_per_image",
            "Image requests: request duration divided by the images it returned",
            ["model"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )

    def images_generated(self, model: str, count: int, seconds: float) -> None:
        """Record one answered image request: ``count`` images in ``seconds``."""
        if count > 0:
            self.images.labels(model).inc(count)
            self.image_seconds.labels(model).observe(seconds / count)

    def venv_build(self, seconds: float, ok: bool) -> None:
        """Record one venv build (called by ``xinfd.venvs`` through its ``on_build`` callback)."""
        self.venv_builds.labels("ok" if ok else "failed").inc()
        self.venv_build_seconds.observe(seconds)

    def usage(self, model: str, body: bytes) -> None:
        """Count tokens from a whole (non-streamed) response's ``usage``."""
        if b'"usage"' not in body:
            return
        try:
            usage = json.loads(body).get("usage") or {}
        except (ValueError, AttributeError):
            return
        self._count(model, usage)

    def _count(self, model: str, usage: dict[str, Any]) -> None:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and prompt >= 0:
            self.prompt_tokens.labels(model).inc(prompt)
        if isinstance(completion, int) and completion >= 0:
            self.completion_tokens.labels(model).inc(completion)

    def watch_manager(
        self,
        manager: Any,
        gpu_memory: Callable[[], dict[int, int]] | None = None,
        *,
        pool_protocol: Callable[[], bool] = lambda: False,
    ) -> None:
        self.registry.register(ManagerCollector(manager, gpu_memory))
        # The inference extension's model server protocol (queue, running, served models), for an InferencePool;
        # exposed while ``pool_protocol()`` is true (the inference_pool_metrics setting, read at each scrape).
        self.registry.register(PoolProtocolCollector(manager, enabled=pool_protocol))


# A streamed delta is a frame whose choice is still open; the chat opening frame carries only the role.
_DELTA = re.compile(rb'"finish_reason":\s*null')
_OPENING = re.compile(rb'"role":\s*"assistant",\s*"content":\s*""')
_USAGE_FRAME = re.compile(rb'^data: (\{.*"usage":\s*\{.*\})\s*$', re.MULTILINE)
# A streamed image: one ``completed`` event per image (``xinfd.image_protocol.stream_event``). The relay reads
# whatever bytes arrived, so the event line may be split between two reads: ``StreamStats`` keeps a short tail.
_IMAGE_COMPLETED = re.compile(rb"^event: image_(?:generation|edit)\.completed\r?$", re.MULTILINE)
_IMAGE_TAIL = 64


class StreamStats:
    """Watches one relayed SSE stream: first-token time, gaps between chunks, and token counts."""

    def __init__(self, metrics: Metrics, model: str, endpoint: str, started: float) -> None:
        self._metrics, self._model, self._endpoint, self._started = metrics, model, endpoint, started
        self._last: float | None = None
        self._deltas = 0
        self._usage: dict[str, Any] | None = None
        # Image streams (endpoint ``images/...``): the completed images, counted as whole answers count them.
        self._images = 0 if endpoint.startswith("images/") else None
        self._tail = b""

    def chunk(self, data: bytes, now: float) -> None:
        if self._images is not None:
            self._count_images(data)
            return
        deltas = len(_DELTA.findall(data)) - len(_OPENING.findall(data))
        if deltas > 0:
            if self._last is None:
                self._metrics.ttft.labels(self._model, self._endpoint).observe(now - self._started)
            else:
                self._metrics.inter_token.labels(self._model).observe(now - self._last)
            self._last = now
            self._deltas += deltas
        if b'"usage":{' in data or b'"usage": {' in data:
            for match in _USAGE_FRAME.finditer(data):
                try:
                    self._usage = json.loads(match[1]).get("usage")
                except ValueError:
                    continue

    def abort(self, reason: str) -> None:
        self._metrics.aborts.labels(self._model, reason).inc()
        self.finish()

    def _count_images(self, data: bytes) -> None:
        """Count the ``completed`` events whose line ends in ``data``: one split across reads is counted once,
        when its end arrives (a match wholly inside the kept tail was counted with the read that ended it)."""
        seen = self._tail + data
        self._images = (self._images or 0) + sum(
            1 for m in _IMAGE_COMPLETED.finditer(seen) if m.end() > len(self._tail)
        )
        self._tail = seen[-_IMAGE_TAIL:]

    def finish(self) -> None:
        if self._images is not None:
            self._metrics.images_generated(self._model, self._images, time.monotonic() - self._started)
            self._images = None  # finish() may be reached twice (abort, then the caller's finish)
            return
        if isinstance(self._usage, dict):
            self._metrics._count(self._model, self._usage)
        elif self._deltas:
            self._metrics.completion_tokens.labels(self._model).inc(self._deltas)


class ManagerCollector(Collector):
    """State metrics read from the ModelManager at scrape time."""

    def __init__(self, manager: Any, gpu_memory: Callable[[], dict[int, int]] | None = None) -> None:
        self._manager = manager
        self._gpu_memory = gpu_memory or nvml_process_memory

    def collect(self) -> Iterator[GaugeFamily]:
        states = GaugeFamily(
            "xinfd_replica_state", "1 for the state each replica is in", labels=["model", "replica", "state"]
        )
        restarts = GaugeFamily(
            "xinfd_replica_restarts",
            "Restarts of each replica in its current crash window (reset once stable)",
            labels=["model", "replica"],
        )
        queued = GaugeFamily(
            "xinfd_requests_queued", "Requests waiting for a free replica slot", labels=["model"]
        )
        outstanding = GaugeFamily(
            "xinfd_replica_requests_outstanding",
            "Requests being served per replica",
            labels=["model", "replica"],
        )
        memory = GaugeFamily(
            "xinfd_replica_gpu_memory_bytes",
            "GPU memory used by each replica (NVML)",
            labels=["model", "replica", "gpu"],
        )
        by_pid = self._safe_gpu_memory()
        for uid, model in list(self._manager.models.items()):
            queued.add_metric([uid], float(getattr(model.router, "waiting", 0)))
            for replica in list(model.replicas):
                index = str(replica.index)
                for state in REPLICA_STATES:
                    states.add_metric([uid, index, state], 1.0 if replica.state.value == state else 0.0)
                restarts.add_metric([uid, index], float(replica.restarts))
                outstanding.add_metric([uid, index], float(replica.outstanding))
                pid = replica.pid
                if pid is not None and pid in by_pid:
                    for gpu in replica.gpu_indices or (-1,):
                        memory.add_metric([uid, index, str(gpu)], float(by_pid[pid]))
        yield from (states, restarts, queued, outstanding, memory)
        yield from self._slots()

    def _safe_gpu_memory(self) -> dict[int, int]:
        try:
            return self._gpu_memory()
        except Exception as exc:  # a driver hiccup must not break the whole scrape
            log.debug("GPU memory query failed: %s", exc)
            return {}

    def _slots(self) -> Iterator[GaugeFamily]:
        total = GaugeFamily("xinfd_gpu_slots", "GPUs the daemon may place replicas on")
        used = GaugeFamily("xinfd_gpu_slots_used", "GPUs holding at least one replica")
        slots = getattr(self._manager, "slots", None)
        gpus = getattr(slots, "gpus", ()) if slots is not None else self._manager.platform.gpus
        holders = getattr(slots, "holders", None)
        total.add_metric([], float(len(gpus)))
        used.add_metric([], float(sum(1 for g in gpus if holders is not None and holders(g.index))))
        yield total
        yield used


def nvml_process_memory() -> dict[int, int]:
    """GPU memory per process id (bytes) over all GPUs, or {} without NVML (no pynvml, no driver)."""
    try:
        import pynvml  # type: ignore[import-not-found,import-untyped,unused-ignore]  # optional dependency
    except ImportError:
        return {}
    result: dict[int, int] = {}
    pynvml.nvmlInit()
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.usedGpuMemory is not None:
                    result[proc.pid] = result.get(proc.pid, 0) + int(proc.usedGpuMemory)
    finally:
        pynvml.nvmlShutdown()
    return result
