"""The daemon's own Prometheus metrics: counters, gauges and histograms with labels, collectors read at
scrape time, and the text exposition format (version 0.0.4) that every Prometheus server and agent reads.

Why not prometheus-client: importing it brings ``http.server``, ``socketserver``, ``wsgiref``, ``gzip`` and its
multiprocess and platform collectors into the daemon (about 1 MiB of an idle daemon's 44 MiB, measured with
``benchmarks/startup.py``), for what fits in this module: the daemon serves ``/metrics`` from its own aiohttp
app and needs neither exporters nor the multiprocess mode. The names, types, labels and sample values are the
ones prometheus-client produced (a counter ``x`` is exposed as ``x_total``; a histogram as ``x_bucket`` with a
cumulative ``le`` label ending at ``+Inf``, ``x_count`` and ``x_sum``); prometheus-client's own parser reads
this output back in the tests. Not produced: the ``_created`` series and the OpenMetrics format, which
Prometheus does not need (it negotiates the text format when the server offers only that).

Metrics are updated from the daemon's event loop (one thread), so plain arithmetic needs no lock.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Generic, NamedTuple, Protocol, TypeVar

from aiohttp import web

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Sample(NamedTuple):
    """One exposed line: the series name (suffix included), its labels and its value."""

    name: str
    labels: dict[str, str]
    value: float


class Family:
    """One metric family as a scrape exposes it: ``# HELP``, ``# TYPE`` and its samples."""

    def __init__(self, name: str, documentation: str, kind: str, samples: list[Sample] | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self.type = kind
        self.samples: list[Sample] = samples if samples is not None else []


class GaugeFamily(Family):
    """A gauge built at scrape time by a collector (state read from the manager, never stored twice)."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, "gauge")
        self._labels = tuple(labels)

    def add_metric(self, values: Sequence[str], value: float) -> None:
        if len(values) != len(self._labels):
            raise ValueError(f"{self.name}: expected {len(self._labels)} label values, got {len(values)}")
        self.samples.append(Sample(self.name, dict(zip(self._labels, values, strict=True)), float(value)))


class Collector(Protocol):
    """Anything that yields families when scraped."""

    def collect(self) -> Iterable[Family]: ...


class Registry:
    """The metrics and collectors of one daemon (one per daemon: tests run several in one process)."""

    def __init__(self) -> None:
        self._collectors: list[Collector] = []

    def register(self, collector: Collector) -> None:
        self._collectors.append(collector)

    def collect(self) -> Iterator[Family]:
        for collector in list(self._collectors):
            yield from collector.collect()

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The value of the series ``name`` with exactly ``labels``, or None if it is not exposed."""
        wanted = labels or {}
        for family in self.collect():
            for sample in family.samples:
                if sample.name == name and sample.labels == wanted:
                    return sample.value
        return None


class _Child(Protocol):
    """One label set's state: what a scrape exposes for it."""

    def samples(self, name: str, labels: dict[str, str]) -> list[Sample]: ...


_ChildT = TypeVar("_ChildT", bound=_Child)


class _Metric(Generic[_ChildT]):
    """What counters, gauges and histograms share: a name, help text, label names and one child per label set."""

    kind = ""
    suffix = ""  # of the family's name: a counter ``x`` is exposed as ``x_total``

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *, registry: Registry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _ChildT] = {}
        if not self.labelnames:
            self._children[()] = self._new_child()
        registry.register(self)

    def _new_child(self) -> _ChildT:
        raise NotImplementedError

    def labels(self, *values: str) -> _ChildT:
        """The child of one label set (created at its first use), in ``labelnames`` order."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected {len(self.labelnames)} label values, got {len(values)}")
            child = self._children[values] = self._new_child()
        return child

    def _unlabelled(self) -> _ChildT:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use .labels(...)")
        return self._children[()]

    def collect(self) -> Iterator[Family]:
        family = Family(self.name + self.suffix, self.documentation, self.kind)
        for values, child in list(self._children.items()):
            labels = dict(zip(self.labelnames, values, strict=True))
            family.samples.extend(child.samples(self.name, labels))
        yield family


class _Value:
    """A counter's or gauge's one number for one label set."""

    __slots__ = ("suffix", "value")

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def samples(self, name: str, labels: dict[str, str]) -> list[Sample]:
        return [Sample(name + self.suffix, labels, self.value)]


class _CounterValue(_Value):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class _GaugeValue(_Value):
    __slots__ = ()

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class Counter(_Metric[_CounterValue]):
    """A count that only goes up, exposed as ``NAME_total``."""

    kind = "counter"
    suffix = "_total"

    def _new_child(self) -> _CounterValue:
        return _CounterValue(self.suffix)

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)


class Gauge(_Metric[_GaugeValue]):
    """A value that goes up and down."""

    kind = "gauge"

    def _new_child(self) -> _GaugeValue:
        return _GaugeValue("")


class _Buckets:
    """One histogram's counts for one label set: per bucket (not cumulative until exposed), sum and count."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break

    def samples(self, name: str, labels: dict[str, str]) -> list[Sample]:
        out: list[Sample] = []
        total = 0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            total += count
            out.append(Sample(name + "_bucket", {**labels, "le": format_value(bound)}, float(total)))
        out.append(Sample(name + "_count", labels, float(total)))
        out.append(Sample(name + "_sum", labels, self.sum))
        return out


class Histogram(_Metric[_Buckets]):
    """Observations counted into cumulative buckets (the last one ``+Inf``), with their count and sum."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: Registry,
        buckets: Sequence[float],
    ) -> None:
        bounds = tuple(sorted(float(b) for b in buckets))
        if not bounds or bounds[-1] != math.inf:
            bounds += (math.inf,)
        self._bounds = bounds
        super().__init__(name, documentation, labelnames, registry=registry)

    def _new_child(self) -> _Buckets:
        return _Buckets(self._bounds)

    def observe(self, value: float) -> None:
        self._unlabelled().observe(value)


def format_value(value: float) -> str:
    """A sample value or bucket bound as Prometheus writes it (``+Inf``, ``NaN``, ``1.0``, ``0.005``)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def render(registry: Registry) -> bytes:
    """Every family of ``registry`` in the text exposition format."""
    lines: list[str] = []
    for family in registry.collect():
        lines.append(f"# HELP {family.name} {_escape_help(family.documentation)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for sample in family.samples:
            if sample.labels:
                # Sorted by name, as prometheus-client wrote them (one series, one spelling, for greps too).
                labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(sample.labels.items()))
                lines.append(f"{sample.name}{{{labels}}} {format_value(sample.value)}")
            else:
                lines.append(f"{sample.name} {format_value(sample.value)}")
    return ("\n".join(lines) + "\n").encode() if lines else b""


def make_handler(registry: Registry) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``GET /metrics``: the registry rendered at each scrape (gzip-compressed when the scraper accepts it, as
    Prometheus does)."""

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=render(registry), headers={"Content-Type": CONTENT_TYPE})
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            response.enable_compression(web.ContentCoding.gzip)
        return response

    return metrics
