"""The metrics the Gateway API Inference Extension's endpoint picker scrapes from a model server.

The extension's model server protocol (``docs/proposals/003-model-server-protocol`` in
kubernetes-sigs/gateway-api-inference-extension) asks each pod for, on its Prometheus endpoint:

========================  =====  ==============================================  ==============================
protocol name             type   meaning                                         name used here (vLLM's)
========================  =====  ==============================================  ==============================
TotalQueuedRequests       Gauge  requests waiting in the server's queue          ``vllm:num_requests_waiting``
TotalRunningRequests      Gauge  requests being served                           ``vllm:num_requests_running``
KVCacheUtilization        Gauge  KV-cache use, a fraction 0..1                   ``vllm:kv_cache_usage_perc``
LoRA adapters             Gauge  value = last update time; labels ``max_lora``,  ``vllm:lora_requests_info``
                                 ``running_lora_adapters``,
                                 ``waiting_lora_adapters``
========================  =====  ==============================================  ==============================

The protocol lets names differ but not types or meaning; the endpoint picker's defaults are vLLM's names, so
using them means an ``InferencePool`` of xinfd pods needs no metric flags on the picker. They are exposed only
with ``inference_pool_metrics`` on (``contrib/kubernetes`` sets it): the colons break Prometheus' naming
conventions (``promtool check metrics``), and a Prometheus that also scrapes vLLM would take xinfd for vLLM.

How xinfd's own state maps onto them, read at scrape time from the ``ModelManager`` (never cached, so never
stale):

* queued = requests waiting in every model's router queue (``Router.waiting``), summed over the pod's models;
* running = requests holding a replica slot (``Replica.outstanding``), summed over every replica;
* the series carry no ``model_name`` label: the picker scores a *pod*, and with several models per pod one
  series per model would leave it to pick one of them at random; per-model counts stay in ``xinfd_*``;
* KV-cache use is reported only when an engine tells the daemon (no builtin engine does yet), so it is
  omitted rather than invented — the picker then scores pods on queue and running counts alone;
* models as adapters: the protocol's LoRA contract is "the request's ``model`` names an adapter the server
  may have loaded". Each xinfd model uid plays that part: ``running_lora_adapters`` lists the models with a
  READY replica, ``waiting_lora_adapters`` those still launching or recovering, and ``max_lora`` equals the
  number running, so the picker's adapter affinity sends a model's requests only to pods that serve it and
  never expects a pod to load a model on demand.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from xinfd.api.exposition import Collector, GaugeFamily
from xinfd.replicas import ReplicaState

QUEUED = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_CACHE = "vllm:kv_cache_usage_perc"
ADAPTERS = "vllm:lora_requests_info"
ADAPTER_LABELS = ("max_lora", "running_lora_adapters", "waiting_lora_adapters")


class PoolProtocolCollector(Collector):
    """Pod-level gauges in the inference extension's model server protocol, from the manager's live state."""

    def __init__(
        self, manager: Any, clock: Callable[[], float] = time.time, enabled: Callable[[], bool] = lambda: True
    ) -> None:
        self._manager = manager
        self._clock = clock
        self._enabled = enabled

    def collect(self) -> Iterator[GaugeFamily]:
        if not self._enabled():
            return
        models = list(self._manager.models.values())
        queued = sum(int(getattr(m.router, "waiting", 0)) for m in models)
        running = sum(int(r.outstanding) for m in models for r in list(m.replicas))
        serving = sorted(m.uid for m in models if _serving(m))
        waiting = sorted(m.uid for m in models if not _serving(m) and m.state != "TERMINATING")
        yield _gauge(QUEUED, "Requests waiting for a replica slot, all models of this daemon", queued)
        yield _gauge(RUNNING, "Requests being served by replicas, all models of this daemon", running)
        adapters = GaugeFamily(
            ADAPTERS,
            "Models served (running) and launching (waiting), in the LoRA-adapter form of the inference "
            "extension's protocol; the value is the time of this report",
            labels=list(ADAPTER_LABELS),
        )
        adapters.add_metric([str(len(serving)), ",".join(serving), ",".join(waiting)], self._clock())
        yield adapters


def _serving(model: Any) -> bool:
    return not model.terminating and any(r.state is ReplicaState.READY for r in model.replicas)


def _gauge(name: str, documentation: str, value: float) -> GaugeFamily:
    family = GaugeFamily(name, documentation)
    family.add_metric([], float(value))
    return family
