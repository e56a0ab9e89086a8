"""/metrics speaks the Gateway API Inference Extension's model server protocol (names, types, labels)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.unit.api.test_front_end import ClientFactory, make_state
from tests.unit.api.test_readiness import add_model
from xinfd.api.openai import make_api_app
from xinfd.api.pool_metrics import PoolProtocolCollector
from xinfd.replicas import ReplicaState

# The protocol's table (docs/proposals/003-model-server-protocol): metric -> type, under the names the
# reference endpoint picker reads by default (vLLM's). KV-cache use is required only where the engine knows it.
REQUIRED = {
    "vllm:num_requests_waiting": "gauge",  # TotalQueuedRequests
    "vllm:num_requests_running": "gauge",  # TotalRunningRequests
    "vllm:lora_requests_info": "gauge",  # LoRA adapters: value = last update time
}
WHERE_KNOWN = {"vllm:kv_cache_usage_perc": "gauge"}  # KVCacheUtilization, a fraction 0..1
LORA_LABELS = {"max_lora", "running_lora_adapters", "waiting_lora_adapters"}


async def test_exposition_has_the_protocol_names_and_types(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    state = make_state(tmp_path, XINFD_INFERENCE_POOL_METRICS="1")
    state.metrics.watch_manager(
        state.manager, gpu_memory=dict, pool_protocol=lambda: state.settings.inference_pool_metrics
    )
    busy = add_model(state, "chat-a", [ReplicaState.READY, ReplicaState.READY])
    busy.replicas[0].outstanding, busy.replicas[1].outstanding = 3, 2
    busy.router.waiting = 4
    other = add_model(state, "chat-b", [ReplicaState.READY])
    other.replicas[0].outstanding = 1
    other.router.waiting = 1
    add_model(state, "loading", [ReplicaState.STARTING])
    client = await aiohttp_client(make_api_app(state))

    text = await (await client.get("/metrics")).text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in {**REQUIRED, **{k: v for k, v in WHERE_KNOWN.items() if k in families}}.items():
        assert name in families, f"{name} missing from /metrics"
        assert families[name].type == kind, (name, families[name].type)
        assert f"# TYPE {name} {kind}" in text
    # Pod totals, one unlabelled series each: the picker scores pods, not models.
    [waiting] = families["vllm:num_requests_waiting"].samples
    [running] = families["vllm:num_requests_running"].samples
    assert (waiting.labels, waiting.value) == ({}, 5.0)
    assert (running.labels, running.value) == ({}, 6.0)
    [info] = families["vllm:lora_requests_info"].samples
    assert set(info.labels) == LORA_LABELS
    assert info.labels["running_lora_adapters"] == "chat-a,chat-b"
    assert info.labels["waiting_lora_adapters"] == "loading"
    assert info.labels["max_lora"] == "2"
    assert info.value > 1.6e9  # a Unix time: "the last updated timestamp"
    assert "vllm:kv_cache_usage_perc" not in families  # no builtin engine reports it: omitted, not invented


def test_collector_follows_the_manager_live(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    collector = PoolProtocolCollector(state.manager, clock=lambda: 1234.5)
    values = {f.name: f.samples[0] for f in collector.collect()}
    assert values["vllm:num_requests_waiting"].value == 0.0
    assert values["vllm:lora_requests_info"].labels["running_lora_adapters"] == ""
    assert values["vllm:lora_requests_info"].value == 1234.5
    model = add_model(state, "m1", [ReplicaState.READY])
    model.replicas[0].outstanding = 7
    values = {f.name: f.samples[0] for f in collector.collect()}
    assert values["vllm:num_requests_running"].value == 7.0
    assert values["vllm:lora_requests_info"].labels["running_lora_adapters"] == "m1"
    model.terminating = True
    values = {f.name: f.samples[0] for f in collector.collect()}
    assert values["vllm:lora_requests_info"].labels == {
        "max_lora": "0",
        "running_lora_adapters": "",
        "waiting_lora_adapters": "",
    }


async def test_off_by_default_and_follows_a_reload(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    from xinfd.config import load_settings

    state = make_state(tmp_path)
    state.metrics.watch_manager(state.manager, pool_protocol=lambda: state.settings.inference_pool_metrics)
    client = await aiohttp_client(make_api_app(state))
    assert "vllm:" not in await (await client.get("/metrics")).text()
    state.settings = load_settings(env={"XINFERENCE_HOME": str(tmp_path), "XINFD_INFERENCE_POOL_METRICS": "1"})
    assert "# TYPE vllm:num_requests_waiting gauge" in await (await client.get("/metrics")).text()
