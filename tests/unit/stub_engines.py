"""Small engine objects for tests that need a plugin but not a real engine (the manager, downloads, venvs).

``StubEngine`` implements ``xinfd.hookspecs.Engine`` with every answer injectable; ``StubPlugin`` registers
engines and model families through the two hooks, as a real plugin module does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from xinfd.hookspecs import RegisterEngine, hookimpl
from xinfd.types import (
    Ability,
    Availability,
    EmbeddingModel,
    LaunchSpec,
    ModelSpec,
    Platform,
    RegisterModel,
    ReplicaContext,
    TextModel,
)


def _available(model: ModelSpec, platform: Platform) -> Availability:
    return Availability(available=True, reason="ok")


def _true(model: ModelSpec, replica: ReplicaContext) -> LaunchSpec:
    return LaunchSpec(argv=("true",))


@dataclass(slots=True, kw_only=True)
class StubEngine:
    name: str
    abilities: tuple[Ability, ...] = ("chat",)
    description: str = ""
    probe_module: str | None = None
    loads_weights_folder: bool = False
    # None: the stub checks option names itself (any option passes unless ``on_launch`` refuses it).
    launch_options: frozenset[str] | None = None
    requirements: list[str] = field(default_factory=list)
    build: dict[str, dict[str, str]] = field(default_factory=dict)
    on_availability: Callable[[ModelSpec, Platform], Availability] = _available
    on_launch: Callable[[ModelSpec, ReplicaContext], LaunchSpec] = _true

    def dependencies(self) -> list[str]:
        return list(self.requirements)

    def build_env(self) -> dict[str, dict[str, str]]:
        return {name: dict(env) for name, env in self.build.items()}

    def availability(self, model: ModelSpec, platform: Platform) -> Availability:
        return self.on_availability(model, platform)

    def launch(self, model: ModelSpec, replica: ReplicaContext) -> LaunchSpec:
        return self.on_launch(model, replica)

    def load(self, model: ModelSpec, replica: ReplicaContext) -> TextModel | EmbeddingModel:
        raise RuntimeError(f"stub engine {self.name!r} loads nothing")


class StubPlugin:
    """A plugin object registering ``engines`` and ``models``."""

    def __init__(self, engines: Iterable[StubEngine], models: Iterable[ModelSpec] = (), *, name: str = "") -> None:
        self.engines = list(engines)
        self.models = list(models)
        if name:  # pluggy's plugin name; without one it is the class name, as for any plugin object
            self.__name__ = name

    @hookimpl
    def xinfd_register_engines(self, register: RegisterEngine) -> None:
        for engine in self.engines:
            register(engine)

    @hookimpl
    def xinfd_register_models(self, register: RegisterModel) -> None:
        for model in self.models:
            register(model)
