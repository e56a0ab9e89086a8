"""The sentence_transformers_rerank engine in-process on a tiny cross-encoder built here (random weights), and
the worker host serving it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from xinfd_engines import rerank as engine

from tests.unit.engines.conftest import launch, make_model, make_replica
from tests.unit.engines.tiny_models import build_tiny_cross_encoder
from xinfd.errors import InvalidRequestError
from xinfd.registry import ModelRegistry
from xinfd.types import RerankModel
from xinfd.worker.host import make_worker_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def test_launch_validates_options_and_the_builtin_family(tmp_path: Path) -> None:
    spec = make_model(name="r", engines=(engine.NAME,), abilities=("rerank",), extra={"model_path": "/m"})
    assert launch(engine, spec, make_replica(engine=engine.NAME)) is not None
    with pytest.raises(InvalidRequestError, match="unknown launch option"):
        launch(engine, spec, make_replica(options={"normalize": "true"}))
    assert engine.ENGINE.abilities == ("rerank",) and engine.ENGINE.dependencies()
    family = ModelRegistry.for_home(tmp_path).builtin()["ms-marco-minilm-l6-v2"]
    assert family.abilities == ("rerank",) and family.engines == (engine.NAME,)
    assert family.extra["model_id"] == "cross-encoder/ms-marco-MiniLM-L-6-v2"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> engine.CrossEncoderModel:
    pytest.importorskip("sentence_transformers")
    folder = build_tiny_cross_encoder(tmp_path_factory.mktemp("ce") / "tiny-ce")
    spec = make_model(name="tiny-ce", engines=(engine.NAME,), abilities=("rerank",), extra={"model_path": str(folder)})
    loaded = engine.ENGINE.load(spec, make_replica(engine=engine.NAME))
    assert isinstance(loaded, engine.CrossEncoderModel) and isinstance(loaded, RerankModel)
    return loaded


async def test_tiny_cross_encoder_scores_and_tokens(tiny: engine.CrossEncoderModel) -> None:
    docs = ["the quick brown fox", "hello world", "the quick brown fox"]
    scores = await tiny.rerank("quick fox", docs)
    assert len(scores) == 3 and all(0.0 < s < 1.0 for s in scores)  # sigmoid of one logit
    assert scores[0] == pytest.approx(scores[2])  # the same pair scores the same
    assert scores[0] != scores[1]
    # [CLS] quick fox [SEP] hello world [SEP]
    assert tiny.count_pair_tokens("quick fox", "hello world") == 7


async def test_worker_host_serves_the_cross_encoder(tiny: engine.CrossEncoderModel, aiohttp_client: Any) -> None:
    app = make_worker_app(tiny, model_uid="tiny-ce", model_name="tiny-ce", context_length=16, max_tokens_cap=None,
                          replica_label="tiny-ce-r0", engine=engine.NAME, request_features=frozenset())
    client = await aiohttp_client(app)
    docs = ["the quick brown fox", "hello world", "a small model"]
    resp = await client.post("/v1/rerank", json={"model": "tiny-ce", "query": "fox", "documents": docs,
                                                 "top_n": 2, "return_documents": True})
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    expected = await tiny.rerank("fox", docs)
    best = sorted(range(3), key=lambda i: -expected[i])[:2]
    assert [r["index"] for r in answer["results"]] == best
    assert [r["document"]["text"] for r in answer["results"]] == [docs[i] for i in best]
    assert answer["results"][0]["relevance_score"] == pytest.approx(expected[best[0]])
    long = await client.post("/v1/rerank", json={"model": "tiny-ce", "query": "fox", "documents": ["word " * 20]})
    assert long.status == 400 and (await long.json())["error"]["param"] == "documents[0]"
