"""The ``llama.cpp`` engine (llama-cpp-python): GGUF models on CPU, served by xinfd's worker host.

The placeholder is ``#llama_cpp_dependencies#``. PyPI has no wheel, so it is built from source; the default
build uses the build machine's native instructions and dies with SIGILL on other CPUs (and on VMs that refuse
AMX), so the engine declares its portable build (``LlamaCppEngine.build_env``: ``BUILD_ENV``) and the venv
builder builds it that way once and keeps the wheel.

A model family whose abilities include ``chat`` or ``generate`` gets ``/v1/chat/completions`` and
``/v1/completions``; an ``embed``-only family gets ``/v1/embeddings`` (``llama_cpp_model``). Launch options:
``n_ctx``, ``n_threads``, ``enable_thinking``; for embeddings also ``pooling`` (auto, model, mean, cls, last)
and ``normalize``. Imported by the daemon: standard library and xinfd types only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xinfd.hookspecs import RegisterEngine, hookimpl
from xinfd.types import Ability, EmbeddingModel, ModelSpec, ReplicaContext, TextModel
from xinfd_engines._common import weights_location
from xinfd_engines._local import LocalEngine
from xinfd_engines.llama_cpp_model import POOLING, LlamaCppEmbedder, LlamaCppModel, bool_option

NAME = "llama.cpp"
REQUIREMENTS = ["llama-cpp-python>=0.3.7", "jinja2>=3.1"]
# How llama-cpp-python must be built (it has no wheel on PyPI): portable CPU code instead of the build machine's
# own instructions (SIGILL elsewhere, and on VMs that refuse AMX), without the multimodal library xinfd does not
# use (halves the build). The venv builder builds it once with these and caches the wheel (xinfd.venvs.wheels).
BUILD_ENV = {"CMAKE_ARGS": "-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"}
__all__ = ["ENGINE", "LlamaCppEmbedder", "LlamaCppEngine", "LlamaCppModel"]


def embeds_only(model: ModelSpec) -> bool:
    """An embedding family (``embed`` without ``chat``/``generate``) is served as embeddings."""
    return "embed" in model.abilities and not ({"chat", "generate"} & set(model.abilities))


def _check_options(options: Mapping[str, Any]) -> None:
    for name in ("n_ctx", "n_threads"):
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not str(value).isdigit() or int(value) < 1):
            raise ValueError(f"launch option {name!r} must be a positive integer, got {value!r}")
    bool_option(options, "enable_thinking")
    bool_option(options, "normalize")
    pooling = options.get("pooling")
    if pooling is not None and pooling != "auto" and pooling not in POOLING:
        raise ValueError(f"launch option 'pooling' must be one of auto, {', '.join(POOLING)}; got {pooling!r}")


class LlamaCppEngine(LocalEngine):
    """``llama.cpp``: one ``.gguf`` file through llama-cpp-python, in xinfd's worker host.

    ``loads_weights_folder`` stays False: a hub repo may hold a dozen quantizations, and picking one is the
    user's call (``model_path``), so the daemon downloads nothing for this engine.
    """

    name = NAME
    abilities: tuple[Ability, ...] = ("chat", "generate", "embed")
    description = "GGUF models via llama-cpp-python"
    probe_module = "llama_cpp"
    launch_options = frozenset({"model_path", "n_ctx", "n_threads", "enable_thinking", "pooling", "normalize"})
    # logprobs/top_logprobs from the logits each token was sampled from; other optional fields are refused.
    request_features = frozenset({"logprobs"})
    modules = ("llama_cpp",)

    def dependencies(self) -> list[str]:
        return list(REQUIREMENTS)

    def build_env(self) -> dict[str, dict[str, str]]:
        return {"llama-cpp-python": dict(BUILD_ENV)}

    def check_launch(self, model: ModelSpec, replica: ReplicaContext) -> None:
        _check_options(replica.options)
        location = weights_location(model, replica.options)
        if not location.endswith(".gguf"):
            raise ValueError(f"llama.cpp loads .gguf files; {location!r} is not one (use model_path=<file.gguf>)")

    def load(self, model: ModelSpec, replica: ReplicaContext) -> TextModel | EmbeddingModel:
        location = weights_location(model, replica.options)
        if embeds_only(model):
            return LlamaCppEmbedder.load(location, replica.options)
        return LlamaCppModel.load(location, replica.options)


ENGINE = LlamaCppEngine()


@hookimpl
def xinfd_register_engines(register: RegisterEngine) -> None:
    register(ENGINE)
