"""``POST /v1/rerank`` in the worker host, on a pure-Python cross-encoder stand-in (word overlap scores)."""

from __future__ import annotations

from typing import Any

from xinfd_echo.model import EchoModel

from xinfd.rerank_protocol import MAX_DOCUMENTS

from .conftest import ClientFactory
from .test_host_validation import assert_refused

DOCS = ["the quick brown fox", "hello world", "a quick fox jumps", "nothing here"]


class OverlapReranker:
    """Scores a document by the share of the query's words it contains; one token per word, plus 3 specials."""

    context_window: int | None = None

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def count_pair_tokens(self, query: str, document: str) -> int:
        return len(query.split()) + len(document.split()) + 3

    async def rerank(self, query: str, documents: list[str]) -> list[float]:
        self.calls.append((query, documents))
        words = set(query.split())
        return [len(words & set(d.split())) / len(words) for d in documents]


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "rr", "query": "quick fox", "documents": DOCS, **fields}


async def test_results_sorted_best_first_with_top_n_and_documents(make_client: ClientFactory) -> None:
    client = await make_client(OverlapReranker(), model_uid="rr")
    resp = await client.post("/v1/rerank", json=body(top_n=2, return_documents=True, return_len=True))
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert [r["index"] for r in answer["results"]] == [0, 2]  # both score 1.0; ties keep the documents' order
    assert answer["results"][0] == {"index": 0, "relevance_score": 1.0, "document": {"text": DOCS[0]}}
    pair_tokens = sum(2 + len(d.split()) + 3 for d in DOCS)
    assert answer["meta"]["tokens"] == {"input_tokens": pair_tokens, "output_tokens": 0}
    assert answer["usage"] == {"prompt_tokens": pair_tokens, "total_tokens": pair_tokens}
    assert answer["id"] and answer["model"] == "rr"


async def test_defaults_all_documents_without_text_or_tokens(make_client: ClientFactory) -> None:
    client = await make_client(OverlapReranker(), model_uid="rr")
    answer = await (await client.post("/v1/rerank", json=body(documents=[{"text": d} for d in DOCS]))).json()
    assert [r["index"] for r in answer["results"]] == [0, 2, 1, 3]
    assert [r["relevance_score"] for r in answer["results"]] == [1.0, 1.0, 0.0, 0.0]
    assert all(r["document"] is None for r in answer["results"])
    assert answer["meta"]["tokens"] is None  # only with return_len, as Xinference


async def test_xinference_client_kwargs_field(make_client: ClientFactory) -> None:
    """xinference-client sends ``kwargs`` as a JSON string (and merges its contents into the body)."""
    client = await make_client(OverlapReranker(), model_uid="rr")
    assert (await client.post("/v1/rerank", json=body(kwargs="{}"))).status == 200
    error = await assert_refused(await client.post("/v1/rerank", json=body(kwargs='{"instruction": "x"}',
                                                                         instruction="x")), "instruction")
    assert "unsupported rerank field" in error["message"]


async def test_refusals_name_the_field(make_client: ClientFactory) -> None:
    model = OverlapReranker()
    client = await make_client(model, model_uid="rr", context_length=8)
    for fields, param in (
        ({"query": ""}, "query"),
        ({"query": {"image": "x"}}, "query"),
        ({"documents": []}, "documents"),
        ({"documents": "one"}, "documents"),
        ({"documents": ["ok", 3]}, "documents[1]"),
        ({"documents": ["x"] * (MAX_DOCUMENTS + 1)}, "documents"),
        ({"top_n": 0}, "top_n"),
        ({"top_n": True}, "top_n"),
        ({"return_documents": "yes"}, "return_documents"),
        ({"max_chunks_per_doc": 2}, "max_chunks_per_doc"),
        ({"rank_fields": ["text"]}, "rank_fields"),
        ({"kwargs": "[1]"}, "kwargs"),
        # 2 query words + 4 + 3 specials = 9 tokens > the context of 8
        ({"documents": ["ok", "one two three four"]}, "documents[1]"),
    ):
        await assert_refused(await client.post("/v1/rerank", json=body(**fields)), param)
    assert model.calls == []  # nothing refused reached the model


async def test_rerank_route_404_for_a_text_model(make_client: ClientFactory) -> None:
    client = await make_client(EchoModel())
    resp = await client.post("/v1/rerank", json=body())
    assert resp.status == 404
    assert "does not support rerank" in (await resp.json())["error"]["message"]
