"""The ``diffusers`` engine: text-to-image pipelines (Stable Diffusion and the like) in xinfd's worker host.

Imported by the daemon: standard library and xinfd's public types only; torch and diffusers are imported by
``DiffusersEngine.load`` inside the replica (``diffusers_model``). Runs on the CPU (slowly) and prefers a GPU:
the replica uses CUDA when the slot table gave it one.

Weights: as for every engine (``xinfd_engines._common.weights_location``): the launch option ``model_path``
(a folder saved by ``save_pretrained``), the spec's ``extra.model_path``, then ``extra.model_id`` (a hub id,
which the daemon downloads because the engine loads a weights folder).

What the model allows and defaults to comes from the family's ``extra`` and may be overridden at launch:
``sizes`` (a list such as ``["512x512", "768x768"]``; default: the pipeline's native size) and
``num_inference_steps`` (default 25). Batching follows ``replica.settings.text_to_image_batching_size``
(``XINFERENCE_TEXT_TO_IMAGE_BATCHING_SIZE``) and ``replica.settings.batch_size`` (images per batch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xinfd.hookspecs import RegisterEngine, hookimpl
from xinfd.image_protocol import parse_size
from xinfd.types import Ability, ImageModel, ModelSpec, ReplicaContext
from xinfd_engines._common import weights_location
from xinfd_engines._local import LocalEngine

NAME = "diffusers"
# What #diffusers_dependencies# expands to. torch is a range: the venv builder applies the host's pip
# constraints / find-links (a CPU wheel here, a CUDA one elsewhere). diffusers>=0.30 for callback_on_step_end
# on every Stable Diffusion pipeline; transformers for the CLIP text encoders; accelerate for low-memory loads.
REQUIREMENTS = ["diffusers>=0.30", "transformers>=4.41", "accelerate>=0.26", "torch>=2.4"]
DEFAULT_STEPS = 25


def sizes_option(model: ModelSpec, options: Mapping[str, Any]) -> tuple[tuple[int, int], ...] | None:
    """The allowed sizes from the launch option ``sizes`` or the spec's ``extra.sizes``; ``None`` if neither.

    :raises ValueError: naming the option for a malformed size.
    """
    raw = options.get("sizes", model.extra.get("sizes"))
    if raw is None:
        return None
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not items:
        raise ValueError(f"launch option 'sizes' must be a list of WIDTHxHEIGHT sizes, got {raw!r}")
    try:
        return tuple(parse_size(item, "sizes") for item in items)
    except Exception as exc:
        raise ValueError(f"launch option 'sizes': {exc}") from None


def steps_option(model: ModelSpec, options: Mapping[str, Any]) -> int:
    raw = options.get("num_inference_steps", model.extra.get("num_inference_steps", DEFAULT_STEPS))
    try:
        steps = int(raw)
    except (TypeError, ValueError):
        steps = 0
    if isinstance(raw, bool) or steps < 1 or (isinstance(raw, float) and not raw.is_integer()):
        raise ValueError(f"launch option 'num_inference_steps' must be a positive integer, got {raw!r}")
    return steps


class DiffusersEngine(LocalEngine):
    """``diffusers``: ``/v1/images/generations`` through a diffusers text-to-image pipeline."""

    name = NAME
    abilities: tuple[Ability, ...] = ("image",)
    description = "Text-to-image with diffusers pipelines (GPU preferred, CPU allowed)"
    probe_module = "diffusers"
    loads_weights_folder = True
    launch_options = frozenset({"model_path", "sizes", "num_inference_steps"})
    modules = ("torch", "diffusers", "transformers")
    # Imported once by the fork server its CPU replicas fork from (xinfd.forkserver).
    preload_modules = ("torch", "diffusers", "transformers", "xinfd_engines.diffusers_model")

    def dependencies(self) -> list[str]:
        return list(REQUIREMENTS)

    def check_launch(self, model: ModelSpec, replica: ReplicaContext) -> None:
        sizes_option(model, replica.options)
        steps_option(model, replica.options)
        batching = replica.settings.text_to_image_batching_size
        if batching is not None:
            parse_size(batching, "text_to_image_batching_size")
        weights_location(model, replica.options)

    def load(self, model: ModelSpec, replica: ReplicaContext) -> ImageModel:
        from xinfd_engines.diffusers_model import DiffusersImageModel

        batching = replica.settings.text_to_image_batching_size
        return DiffusersImageModel.load(
            weights_location(model, replica.options),
            sizes=sizes_option(model, replica.options),
            default_steps=steps_option(model, replica.options),
            batching_size=parse_size(batching, "text_to_image_batching_size") if batching else None,
            max_batch=replica.settings.batch_size,
        )


ENGINE = DiffusersEngine()


@hookimpl
def xinfd_register_engines(register: RegisterEngine) -> None:
    register(ENGINE)
