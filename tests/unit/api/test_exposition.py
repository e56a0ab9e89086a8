"""The daemon's own /metrics exposition (``xinfd.api.exposition``), read back by prometheus-client's parser:
the names, types, labels and values a Prometheus server would store."""

from __future__ import annotations

import gzip
import math

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.api.test_front_end import ClientFactory
from xinfd.api.exposition import (
    CONTENT_TYPE,
    Counter,
    Gauge,
    GaugeFamily,
    Histogram,
    Registry,
    format_value,
    make_handler,
    render,
)


def parsed(registry: Registry) -> dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]]:
    return {
        f.name: (f.type, [(s.name, s.labels, s.value) for s in f.samples])
        for f in text_string_to_metric_families(render(registry).decode())
    }


def test_counters_gauges_and_labels_read_back_as_prometheus_stores_them() -> None:
    registry = Registry()
    requests = Counter("xinfd_requests", "Requests by model", ["model", "status"], registry=registry)
    plain = Counter("xinfd_builds", "Builds", registry=registry)
    in_flight = Gauge("xinfd_in_flight", "In flight", ["model"], registry=registry)
    requests.labels("a", "200").inc()
    requests.labels("a", "200").inc(2)
    requests.labels("b", "429").inc()
    plain.inc()
    in_flight.labels("a").inc(3)
    in_flight.labels("a").dec()
    in_flight.labels("b").set(7)
    families = parsed(registry)
    # The parser names a counter family without _total; its samples keep it.
    assert families["xinfd_requests"] == ("counter", [
        ("xinfd_requests_total", {"model": "a", "status": "200"}, 3.0),
        ("xinfd_requests_total", {"model": "b", "status": "429"}, 1.0),
    ])
    assert families["xinfd_builds"] == ("counter", [("xinfd_builds_total", {}, 1.0)])
    assert families["xinfd_in_flight"] == ("gauge", [
        ("xinfd_in_flight", {"model": "a"}, 2.0), ("xinfd_in_flight", {"model": "b"}, 7.0)])
    assert registry.get_sample_value("xinfd_requests_total", {"model": "a", "status": "200"}) == 3.0
    assert registry.get_sample_value("xinfd_requests_total", {"model": "zz", "status": "200"}) is None
    # Labels are written sorted by name, whatever their declared order (prometheus-client's spelling).
    assert 'xinfd_requests_total{model="a",status="200"} 3.0' in render(registry).decode()
    histogram = Histogram("xinfd_h", "H", ["model"], registry=registry, buckets=(1,))
    histogram.labels("m").observe(0.5)
    assert 'xinfd_h_bucket{le="1.0",model="m"} 1.0' in render(registry).decode()


def test_a_histogram_has_cumulative_buckets_ending_at_inf_its_count_and_sum() -> None:
    registry = Registry()
    latency = Histogram("xinfd_latency_seconds", "Latency", ["model"], registry=registry, buckets=(0.1, 1, 10))
    for value in (0.05, 0.1, 0.5, 3, 30):
        latency.labels("m").observe(value)
    _, samples = parsed(registry)["xinfd_latency_seconds"]
    buckets = {s[1]["le"]: s[2] for s in samples if s[0].endswith("_bucket")}
    assert buckets == {"0.1": 2.0, "1.0": 3.0, "10.0": 4.0, "+Inf": 5.0}  # 0.1 falls in le="0.1"
    assert ("xinfd_latency_seconds_count", {"model": "m"}, 5.0) in samples
    assert ("xinfd_latency_seconds_sum", {"model": "m"}, pytest.approx(33.65)) in samples
    unlabelled = Histogram("xinfd_build_seconds", "Builds", registry=registry, buckets=(1, math.inf))
    unlabelled.observe(2)
    assert registry.get_sample_value("xinfd_build_seconds_bucket", {"le": "+Inf"}) == 1.0
    assert registry.get_sample_value("xinfd_build_seconds_bucket", {"le": "1.0"}) == 0.0


def test_label_values_and_help_text_are_escaped() -> None:
    registry = Registry()
    hostile = 'a"b\\c\nd'
    Counter("xinfd_odd", 'Help with \\ and\na newline', ["model"], registry=registry).labels(hostile).inc()
    text = render(registry).decode()
    assert '# HELP xinfd_odd_total Help with \\\\ and\\na newline' in text
    [(_, labels, value)] = parsed(registry)["xinfd_odd"][1]
    assert labels == {"model": hostile} and value == 1.0


def test_collectors_are_read_at_each_scrape() -> None:
    registry = Registry()
    state = {"queued": 1}

    class Live:
        def collect(self) -> list[GaugeFamily]:
            family = GaugeFamily("xinfd_queued", "Queued", labels=["model"])
            family.add_metric(["m"], state["queued"])
            return [family]

    registry.register(Live())
    assert registry.get_sample_value("xinfd_queued", {"model": "m"}) == 1.0
    state["queued"] = 4
    assert parsed(registry)["xinfd_queued"] == ("gauge", [("xinfd_queued", {"model": "m"}, 4.0)])


def test_misuse_is_refused() -> None:
    registry = Registry()
    counter = Counter("xinfd_c", "C", ["model"], registry=registry)
    with pytest.raises(ValueError, match="only goes up"):
        counter.labels("m").inc(-1)
    with pytest.raises(ValueError, match="expected 1 label values"):
        counter.labels("m", "extra")
    with pytest.raises(ValueError, match=r"use \.labels"):
        counter.inc()
    with pytest.raises(ValueError, match="expected 2 label values"):
        GaugeFamily("xinfd_g", "G", labels=["a", "b"]).add_metric(["x"], 1)


def test_values_are_written_as_prometheus_reads_them() -> None:
    assert [format_value(v) for v in (1, 0.005, math.inf, -math.inf, 1e20)] == ["1.0", "0.005", "+Inf", "-Inf",
                                                                                 "1e+20"]
    assert format_value(math.nan) == "NaN"
    assert render(Registry()) == b""


async def test_the_handler_serves_the_text_format_gzipped_when_asked(aiohttp_client: ClientFactory) -> None:
    registry = Registry()
    Counter("xinfd_hits", "Hits", registry=registry).inc(5)
    app = web.Application()
    app.router.add_get("/metrics", make_handler(registry))
    client = await aiohttp_client(app)
    plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert plain.headers["Content-Type"] == CONTENT_TYPE
    assert "xinfd_hits_total 5.0" in await plain.text()
    zipped = await client.get("/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert b"xinfd_hits_total 5.0" in gzip.decompress(await zipped.read())
