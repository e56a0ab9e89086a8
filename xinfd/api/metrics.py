"""Prometheus metrics of the front end, exposed through prometheus-client's own aiohttp handler.

A per-daemon ``CollectorRegistry`` (not the global one) keeps tests and several daemons in one process apart.
Labels are bounded: model uid and endpoint, never request data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(slots=True)
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    requests: Counter = field(init=False)
    latency: Histogram = field(init=False)
    in_flight: Gauge = field(init=False)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "xinfd_requests", "Inference requests by model, endpoint and status",
            ["model", "endpoint", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "xinfd_request_duration_seconds", "Inference request latency (to the last byte)",
            ["model", "endpoint"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.in_flight = Gauge(
            "xinfd_requests_in_flight", "Inference requests being served", ["model"], registry=self.registry,
        )
