"""``POST /v1/rerank`` request validation and response body (pure functions, no aiohttp).

The format is Xinference's, which is Jina's and Cohere's: ``{"model", "query", "documents", "top_n",
"return_documents", "return_len", "max_chunks_per_doc"}`` in, ``{"id", "results": [{"index",
"relevance_score", "document": {"text"} | null}], "meta": {"api_version", "billed_units", "tokens",
"warnings"}}`` out, results sorted by score, best first. ``xinference-client``'s ``rerank()`` also sends
``kwargs`` (a JSON *string* of its extra keyword arguments, which it additionally merges into the body).

Nothing is silently ignored: ``max_chunks_per_doc`` (splitting long documents) is refused when set, an extra
keyword argument is refused by name, and a document longer than the model's context is a 400 naming it rather
than a truncated, misleading score. Like ``xinfd.openai_protocol``, the daemon and the worker host both run
``parse_rerank_request``, so the daemon refuses a bad body without a replica round trip.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from xinfd.errors import InvalidRequestError

# Cohere's documented limit per request; beyond it a client should batch. It also bounds the work one request
# can queue on a replica.
MAX_DOCUMENTS = 1000
_FIELDS = frozenset(
    {"model", "query", "documents", "top_n", "return_documents", "return_len", "max_chunks_per_doc", "kwargs"}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RerankRequest:
    """A validated rerank body; ``top_n`` is ``None`` for every document."""

    query: str
    documents: tuple[str, ...]
    top_n: int | None = None
    return_documents: bool = False
    return_len: bool = False


def parse_rerank_request(body: Mapping[str, Any]) -> RerankRequest:
    """Validate a rerank body; every refusal is an ``InvalidRequestError`` naming the field (``param``)."""
    extra = _client_kwargs(body)
    unknown = sorted((set(body) - _FIELDS) | set(extra))
    if unknown:
        raise _invalid(unknown[0], f"unsupported rerank field(s): {', '.join(unknown)} "
                                   f"(supported: {', '.join(sorted(_FIELDS - {'kwargs'}))})")
    query = body.get("query")
    if isinstance(query, dict):
        raise _invalid("query", "multimodal queries are not supported; 'query' must be a string")
    if not isinstance(query, str) or not query:
        raise _invalid("query", "'query' must be a non-empty string")
    documents = body.get("documents")
    if not isinstance(documents, list) or not documents:
        raise _invalid("documents", "'documents' must be a non-empty list of strings")
    if len(documents) > MAX_DOCUMENTS:
        raise _invalid("documents", f"at most {MAX_DOCUMENTS} documents per request, got {len(documents)}")
    texts = tuple(_document_text(d, i) for i, d in enumerate(documents))
    top_n = body.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise _invalid("top_n", f"'top_n' must be a positive integer, got {top_n!r}")
    if body.get("max_chunks_per_doc") is not None:
        raise _invalid("max_chunks_per_doc", "'max_chunks_per_doc' is not supported: documents are scored whole "
                                             "and one longer than the model's context is refused")
    return RerankRequest(
        query=query,
        documents=texts,
        top_n=top_n,
        return_documents=_flag(body, "return_documents"),
        return_len=_flag(body, "return_len"),
    )


def check_pair_lengths(counts: Sequence[int], *, context_length: int) -> None:
    """Refuse a query + document pair longer than the model's context, naming the first such document."""
    for index, count in enumerate(counts):
        if count > context_length:
            raise _invalid(f"documents[{index}]", f"query + documents[{index}] are {count} tokens; the model's "
                                                 f"context is {context_length} tokens")


def rerank_body(
    request: RerankRequest, scores: Sequence[float], *, response_id: str, model: str, input_tokens: int
) -> dict[str, Any]:
    """The response: results best first (ties keep the documents' order), at most ``top_n`` of them.

    ``meta.tokens`` is reported when ``return_len`` is set, as Xinference does (``output_tokens`` is 0: a
    cross-encoder generates nothing); ``usage`` (Jina's, and what the daemon's token metrics read) always is.
    """
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    if request.top_n is not None:
        order = order[: request.top_n]
    results = [
        {
            "index": i,
            "relevance_score": float(scores[i]),
            "document": {"text": request.documents[i]} if request.return_documents else None,
        }
        for i in order
    ]
    tokens = {"input_tokens": input_tokens, "output_tokens": 0} if request.return_len else None
    return {
        "id": response_id,
        "model": model,
        "results": results,
        "meta": {"api_version": None, "billed_units": None, "tokens": tokens, "warnings": None},
        "usage": {"prompt_tokens": input_tokens, "total_tokens": input_tokens},
    }


def _client_kwargs(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """``xinference-client`` sends its extra keyword arguments as ``kwargs``, a JSON-encoded object."""
    raw = body.get("kwargs")
    if raw is None:
        return {}
    decoded = raw
    if isinstance(raw, str):
        try:
            decoded = json.loads(raw)
        except ValueError:
            raise _invalid("kwargs", "'kwargs' must be a JSON object (or its JSON encoding)") from None
    if not isinstance(decoded, dict):
        raise _invalid("kwargs", "'kwargs' must be a JSON object (or its JSON encoding)")
    return decoded


def _document_text(raw: object, index: int) -> str:
    if isinstance(raw, dict) and set(raw) == {"text"}:
        raw = raw["text"]  # Jina's and Cohere's object form
    if not isinstance(raw, str):
        raise _invalid(f"documents[{index}]", f"documents[{index}] must be a string or {{\"text\": string}} "
                                              "(multimodal documents are not supported)")
    return raw


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _invalid(name, f"'{name}' must be a boolean, got {value!r}")
    return value


def _invalid(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)
