"""contrib/kubernetes: the manifests pass schema validation offline and agree with xinfd and with each other.

Core kinds (StatefulSet, Service) are checked strictly by ``kubernetes-validate`` against the Kubernetes
OpenAPI schemas it ships; the Gateway API kinds (InferencePool, HTTPRoute) against the JSON schemas in
``contrib/kubernetes/schemas``, written from those APIs' v1 references. Then what no schema can see: the probes
call the per-model readiness route of a launched model, every variable is an xinfd setting, the drain outlasts
the readiness probe and fits in the termination grace, and the pool selects the pods on their port.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from xinfd.config import ENV_VARS

KUBE = Path(__file__).resolve().parents[3] / "contrib" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
CUSTOM = {"InferencePool": "inferencepool-v1.json", "HTTPRoute": "httproute-v1.json"}


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(KUBE.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str) -> dict[str, Any]:
    [doc] = [d for d in documents() if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_valid(doc: dict[str, Any]) -> None:
    if doc["kind"] in CUSTOM:
        schema = json.loads((KUBE / "schemas" / CUSTOM[doc["kind"]]).read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.Draft202012Validator(schema).validate(doc)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_validators_catch_mistakes() -> None:
    """The checks above would fail on a broken manifest (a misspelled field, a bad enum)."""
    statefulset = by_kind("StatefulSet")
    broken = json.loads(json.dumps(statefulset))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    pool = json.loads(json.dumps(by_kind("InferencePool")))
    pool["spec"]["endpointPickerRef"]["failureMode"] = "Sometimes"
    schema = json.loads((KUBE / "schemas" / CUSTOM["InferencePool"]).read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(pool, schema, cls=jsonschema.Draft202012Validator)
    del pool["spec"]["endpointPickerRef"]["port"]  # port is required when kind is Service (the default)
    pool["spec"]["endpointPickerRef"]["failureMode"] = "FailOpen"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(pool, schema, cls=jsonschema.Draft202012Validator)


def _container() -> dict[str, Any]:
    container: dict[str, Any] = by_kind("StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    return container


def _env() -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in _container()["env"]}


def test_container_is_configured_by_xinfd_variables_only() -> None:
    container = _container()
    assert "args" not in container and "command" not in container
    unknown = sorted(set(_env()) - set(ENV_VARS))
    assert unknown == [], f"not xinfd settings: {unknown}"
    assert _env()["XINFERENCE_HOME"] == container["volumeMounts"][0]["mountPath"]
    claim = by_kind("StatefulSet")["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == container["volumeMounts"][0]["name"]


def test_probes_use_the_readiness_route_of_a_launched_model() -> None:
    container, env = _container(), _env()
    launched = {item.split(":")[0] for item in env["XINFD_LAUNCH"].split(",")}
    for probe in ("readinessProbe", "startupProbe"):
        path = container[probe]["httpGet"]["path"]
        assert path.startswith("/health/models/") and path.removeprefix("/health/models/") in launched, path
    assert "httpGet" not in container["livenessProbe"]  # /health is 503 while draining: never a liveness check


def test_drain_outlasts_the_probe_and_fits_the_grace_period() -> None:
    container, env = _container(), _env()
    readiness = container["readinessProbe"]
    noticed = readiness["periodSeconds"] * readiness["failureThreshold"]
    grace = float(env["XINFD_DRAIN_GRACE"])
    assert grace > noticed, "requests still arrive after readiness fails: the grace must cover the probe"
    total = grace + float(env["XINFD_DRAIN_TIMEOUT"]) + float(env["XINFD_STOP_GRACE_PERIOD"])
    assert by_kind("StatefulSet")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > total


def test_pool_route_and_pods_agree() -> None:
    statefulset, pool, route = by_kind("StatefulSet"), by_kind("InferencePool"), by_kind("HTTPRoute")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert pool["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["containerPort"] for p in _container()["ports"]}
    assert {p["number"] for p in pool["spec"]["targetPorts"]} <= ports
    assert int(_env()["XINFD_PORT"]) in ports
    assert _env()["XINFD_INFERENCE_POOL_METRICS"] == "1"  # the endpoint picker's gauges on /metrics
    [backend] = route["spec"]["rules"][0]["backendRefs"]
    assert (backend["group"], backend["kind"], backend["name"]) == (
        "inference.networking.k8s.io",
        "InferencePool",
        pool["metadata"]["name"],
    )
    service = by_kind("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
