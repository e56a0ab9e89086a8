"""``/v1/rerank`` through a real daemon on a tiny cross-encoder built here and registered as a custom family
(``model_path``): plain HTTP as curl sends it, Xinference's ``RESTfulClient(...).get_model(uid).rerank(...)``,
refusals naming the field, and the request and token metrics."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sentence_transformers")

from tests.integration.conftest import Daemon  # after the importorskip
from tests.unit.engines.tiny_models import build_tiny_cross_encoder

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

DOCS = ["the quick brown fox", "hello world, how are you today?", "a small model for tests"]


ADMIN = "sk-admin-rerank"


@pytest.fixture
def daemon(make_daemon: Any) -> Daemon:
    started: Daemon = make_daemon(env={"XINFD_ADMIN_API_KEYS": ADMIN}).start()
    return started


def post(daemon: Daemon, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(daemon.endpoint + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_rerank_through_the_daemon(daemon: Daemon, tmp_path: Path) -> None:
    folder = build_tiny_cross_encoder(tmp_path / "tiny-ce")
    spec = {"name": "tiny-ce", "abilities": ["rerank"], "engines": ["sentence_transformers_rerank"],
            "context_length": 32, "extra": {"model_path": str(folder)}}
    spec_file = tmp_path / "tiny-ce.json"
    spec_file.write_text(json.dumps(spec))
    daemon.xinfctl("register", "--file", str(spec_file))
    from xinference_client import RESTfulClient

    admin = RESTfulClient(daemon.endpoint, api_key=ADMIN)
    uid = admin.launch_model(model_name="tiny-ce", model_type="rerank", model_engine="sentence_transformers_rerank",
                             model_uid="tiny-ce")
    assert uid == "tiny-ce"
    desc = admin.describe_model(uid)
    assert desc["model_type"] == "rerank" and desc["model_ability"] == ["rerank"]
    assert desc["model_engine"] == "sentence_transformers_rerank"
    assert "tiny-ce" in [r["model_name"] for r in admin.list_model_registrations("rerank")]
    assert "ms-marco-minilm-l6-v2" in [r["model_name"] for r in admin.list_model_registrations("rerank")]

    status, answer = post(daemon, "/v1/rerank", {"model": "tiny-ce", "query": "quick fox", "documents": DOCS,
                                                 "top_n": 2, "return_documents": True, "return_len": True})
    assert status == 200, answer
    assert len(answer["results"]) == 2
    scores = [r["relevance_score"] for r in answer["results"]]
    assert scores == sorted(scores, reverse=True)
    assert all(r["document"]["text"] == DOCS[r["index"]] for r in answer["results"])
    assert answer["meta"]["tokens"]["input_tokens"] > 0

    # Xinference's client picks its rerank handle from the describe shape (model_type "rerank").
    handle: Any = admin.get_model("tiny-ce")
    assert type(handle).__name__ == "RESTfulRerankModelHandle"
    ranked = handle.rerank(DOCS, "quick fox")
    assert sorted(r["index"] for r in ranked["results"]) == [0, 1, 2]
    assert ranked["results"][0]["relevance_score"] == pytest.approx(scores[0])
    assert all(r["document"] is None for r in ranked["results"])
    with pytest.raises(RuntimeError, match="max_chunks_per_doc"):  # refused by the daemon
        handle.rerank(DOCS, "quick fox", max_chunks_per_doc=2)
    with pytest.raises(RuntimeError, match=r"documents\[0\]"):  # refused by the replica (needs the tokenizer)
        handle.rerank(["fox " * 40], "quick fox")

    for body, param in (
        ({"documents": []}, "documents"),
        ({"top_n": 0}, "top_n"),
        ({"documents": ["fox " * 40]}, "documents[0]"),  # longer than the family's context of 32
    ):
        status, refusal = post(daemon, "/v1/rerank", {"model": "tiny-ce", "query": "q", "documents": DOCS, **body})
        assert status == 400 and refusal["error"]["param"] == param, refusal
    status, refusal = post(daemon, "/v1/embeddings", {"model": "tiny-ce", "input": "x"})
    assert status == 404, refusal

    with urllib.request.urlopen(daemon.endpoint + "/metrics", timeout=30) as response:
        metrics = response.read().decode()
    assert 'endpoint="rerank"' in metrics
    assert any(line.startswith("xinfd_prompt_tokens_total{") and 'model="tiny-ce"' in line
               for line in metrics.splitlines()), "rerank usage counts prompt tokens"
    admin.terminate_model("tiny-ce")
    assert "tiny-ce" not in admin.list_models()
