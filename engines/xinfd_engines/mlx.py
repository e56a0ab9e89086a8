"""The mlx engine (mlx-lm): native on Apple silicon; on Linux it runs on the CPU with the ``mlx-lm[cpu]``
extra (the plain ``mlx`` wheel for Linux has no backend, so ``import mlx.core`` fails without ``mlx-cpu``).

Served by xinfd's worker host with mlx-lm's own continuous batching (``mlx_model``). Weights: a Hugging Face
or mlx-community folder (``model_path`` option or the spec's ``extra``, as for the transformers engine).
Imported by the daemon: standard library and xinfd types only.
"""

from __future__ import annotations

import importlib.metadata

from xinfd.hookspecs import RegisterEngine, hookimpl
from xinfd.types import Ability, Availability, EmbeddingModel, ModelSpec, Platform, ReplicaContext, TextModel
from xinfd_engines._common import weights_location
from xinfd_engines._local import LocalEngine, bool_option

NAME = "mlx"
REQUIREMENTS = ['mlx-lm>=0.28 ; sys_platform == "darwin"', 'mlx-lm[cpu]>=0.28 ; sys_platform == "linux"']


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def platform_reason(platform: Platform) -> str | None:
    """Why mlx cannot run on this host at all, or ``None``."""
    if platform.system == "Darwin":
        return None if platform.machine == "arm64" else "mlx needs Apple silicon (arm64); this Mac is Intel"
    if platform.system == "Linux":
        return None
    return (
        f"mlx runs on macOS (Apple silicon) or Linux; this host runs {platform.system or 'an unknown system'}"
    )


class MlxEngine(LocalEngine):
    """``mlx``: mlx-lm with its continuous batching, in xinfd's worker host."""

    name = NAME
    abilities: tuple[Ability, ...] = ("chat", "generate")
    description = "mlx-lm with continuous batching (Apple silicon; Linux CPU with mlx-lm[cpu])"
    probe_module = "mlx_lm"
    loads_weights_folder = True
    launch_options = frozenset({"model_path", "enable_thinking"})
    modules = ("mlx_lm",)

    def dependencies(self) -> list[str]:
        return list(REQUIREMENTS)

    def availability(self, model: ModelSpec, platform: Platform) -> Availability:
        reason = platform_reason(platform)
        if reason is not None:
            return Availability(available=False, reason=reason)
        missing_backend = platform.system == "Linux" and not _installed("mlx-cpu")
        # Plain mlx-lm on Linux installs, but `import mlx.core` fails without the cpu extra's backend.
        if not platform.venv_enabled and missing_backend and _installed("mlx-lm"):
            return Availability(
                available=False,
                reason="mlx-lm is installed without its CPU backend on Linux: pip install 'mlx-lm[cpu]'",
            )
        return super().availability(model, platform)

    def check_launch(self, model: ModelSpec, replica: ReplicaContext) -> None:
        bool_option(replica.options, "enable_thinking")
        weights_location(model, replica.options)

    def load(self, model: ModelSpec, replica: ReplicaContext) -> TextModel | EmbeddingModel:
        from xinfd_engines.mlx_model import MlxTextModel

        return MlxTextModel(
            weights_location(model, replica.options),
            batch_size=replica.settings.batch_size,
            enable_thinking=bool_option(replica.options, "enable_thinking"),
        )


ENGINE = MlxEngine()


@hookimpl
def xinfd_register_engines(register: RegisterEngine) -> None:
    register(ENGINE)
