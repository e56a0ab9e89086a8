"""The ``sentence_transformers_rerank`` engine: ``/v1/rerank`` through a sentence-transformers ``CrossEncoder``.

A separate engine from ``sentence_transformers`` (embeddings) because the model objects differ (a cross-encoder
scores a query + document pair; it has no vectors) and a family is one or the other; both share the
dependencies, so ``#sentence_transformers_rerank_dependencies#`` expands to the same packages. Weights come
from the usual places (``model_path`` option, ``extra.model_path``, ``extra.package_file``, ``extra.model_id``).

Imported by the daemon: standard library and xinfd types at top level; sentence-transformers and torch are
imported in ``load`` (replica process). Scoring runs in a worker thread, one call at a time, so the event loop
keeps answering health checks while a batch is scored.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from xinfd.hookspecs import RegisterEngine, hookimpl
from xinfd.types import Ability, ModelSpec, ReplicaContext, RerankModel
from xinfd_engines._common import weights_location
from xinfd_engines._local import LocalEngine
from xinfd_engines.embeddings import REQUIREMENTS

log = logging.getLogger(__name__)

NAME = "sentence_transformers_rerank"


class CrossEncoderModel:
    """A ``RerankModel`` over a loaded ``CrossEncoder``; scores are the model's own (a sigmoid for one-logit
    cross-encoders, as ``CrossEncoder.predict`` applies by default)."""

    # The family's context_length is the limit; the host refuses longer pairs rather than let the model truncate.
    context_window: int | None = None

    def __init__(self, model: Any) -> None:
        self.model = model
        self._lock = threading.Lock()  # one predict at a time: torch already uses every core it is given

    @classmethod
    def load(cls, location: str) -> CrossEncoderModel:
        import torch
        from sentence_transformers import CrossEncoder

        model = CrossEncoder(location, device="cuda" if torch.cuda.is_available() else "cpu")
        log.info("loaded cross-encoder %s", location)
        return cls(model)

    def count_pair_tokens(self, query: str, document: str) -> int:
        return len(self.model.tokenizer(query, document, add_special_tokens=True)["input_ids"])

    async def rerank(self, query: str, documents: list[str]) -> list[float]:
        return await asyncio.to_thread(self._predict, query, documents)

    def _predict(self, query: str, documents: list[str]) -> list[float]:
        with self._lock:
            scores = self.model.predict([(query, d) for d in documents], convert_to_numpy=True,
                                        show_progress_bar=False)
        return [float(s) for s in scores.reshape(len(documents), -1)[:, 0]]


class CrossEncoderRerankEngine(LocalEngine):
    """``sentence_transformers_rerank``: ``/v1/rerank`` in xinfd's worker host."""

    name = NAME
    abilities: tuple[Ability, ...] = ("rerank",)
    description = "Document reranking with cross-encoders (sentence-transformers CrossEncoder)"
    probe_module = "sentence_transformers"
    loads_weights_folder = True
    launch_options = frozenset({"model_path"})
    modules = ("torch", "sentence_transformers")
    # Imported once by the fork server its CPU replicas fork from (xinfd.forkserver).
    preload_modules = ("torch", "sentence_transformers", "xinfd_engines.rerank")

    def dependencies(self) -> list[str]:
        return list(REQUIREMENTS)

    def check_launch(self, model: ModelSpec, replica: ReplicaContext) -> None:
        weights_location(model, replica.options)

    def load(self, model: ModelSpec, replica: ReplicaContext) -> RerankModel:
        return CrossEncoderModel.load(weights_location(model, replica.options))


ENGINE = CrossEncoderRerankEngine()


@hookimpl
def xinfd_register_engines(register: RegisterEngine) -> None:
    register(ENGINE)
