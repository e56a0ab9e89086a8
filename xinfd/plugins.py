"""Plugin loading and the typed facade over ``pm.hook``.

Builtin engines and third-party packages are found the same way, through the entry-point group ``xinfd``, so
the public path is the tested path. pluggy only discovers: the plugins hand over engine objects
(``xinfd.hookspecs.Engine``) and ``Plugins`` keeps them by name. A plugin that fails to import, registers an
engine name that is already taken or an object that is not an ``Engine``, or still implements a removed hook,
is logged with its name and skipped: one broken package never stops the daemon. Call sites go through
``Plugins`` (typed, with every result checked), never through ``pm.hook``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, get_args

import pluggy

from xinfd import hookspecs
from xinfd.errors import InvalidRequestError, PluginError, UnknownEngineError
from xinfd.hookspecs import Engine
from xinfd.types import (
    Ability,
    Availability,
    EmbeddingModel,
    ImageModel,
    LaunchSpec,
    LoadedModel,
    ModelSpec,
    Platform,
    ReplicaContext,
    RerankModel,
    TextModel,
)
from xinfd.venv_markers import venv_entry_reason

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "xinfd"
DISABLE_AUTOLOAD_ENV = "XINFD_DISABLE_PLUGIN_AUTOLOAD"
EXTRA_PLUGINS_ENV = "XINFD_PLUGINS"


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginFailure:
    """A plugin that could not be loaded or registered, kept for ``xinfctl status``."""

    name: str
    error: str


@dataclass(slots=True)
class Plugins:
    """The engines and models the plugins declared, with typed, checked calls into the engines.

    Every call into an engine goes through here: its result is type-checked (a wrong type is a ``PluginError``
    naming the engine), so the rest of the daemon can trust what it gets.
    """

    pm: pluggy.PluginManager
    engines: dict[str, Engine] = field(default_factory=dict)
    models: dict[str, ModelSpec] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)
    # Which plugin registered each engine (for messages and ``xinfctl engines``).
    engine_owner: dict[str, str] = field(default_factory=dict)

    def engine(self, name: str) -> Engine:
        """The registered engine called ``name``, or ``UnknownEngineError`` listing the known ones."""
        try:
            return self.engines[name]
        except KeyError:
            known = ", ".join(sorted(self.engines)) or "none"
            raise UnknownEngineError(f"unknown engine {name!r} (registered: {known})") from None

    def request_features(self, engine: str) -> frozenset[str] | None:
        """The optional request fields ``engine`` honours (``Engine.request_features``; absent: none), or ``None``
        when its own server checks them. A value of the wrong type counts as none, never as "pass all"."""
        value: object = getattr(self.engine(engine), "request_features", frozenset())
        if value is None:
            return None
        if isinstance(value, frozenset) and all(isinstance(f, str) for f in value):
            return value
        log.warning("engine %s: request_features must be a frozenset of names or None; treating it as empty", engine)
        return frozenset()

    def dependencies(self, engine: str) -> list[str]:
        """What ``#<engine>_dependencies#`` expands to."""
        result = self.engine(engine).dependencies()
        if not isinstance(result, list) or not all(isinstance(r, str) for r in result):
            raise PluginError(f"engine {engine!r}: dependencies() must return a list of strings")
        return list(result)

    def build_env(self, engine: str) -> dict[str, dict[str, str]]:
        """Distributions of ``engine`` that must be built from source, with their build environment."""
        result = self.engine(engine).build_env()
        if not isinstance(result, dict) or not all(
            isinstance(name, str) and isinstance(env, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
            for name, env in result.items()
        ):
            raise PluginError(f"engine {engine!r}: build_env() must return {{name: {{VAR: value}}}}")
        return {name: dict(env) for name, env in result.items()}

    def availability(self, engine: str, model: ModelSpec, platform: Platform) -> Availability:
        """Whether ``engine`` can serve ``model`` here; an engine that raises is unavailable. With venvs on,
        the model's ``virtualenv`` block must have an entry for the engine first (``xinfd.venv_markers``)."""
        found = self.engine(engine)
        if platform.venv_enabled and (reason := venv_entry_reason(model.virtualenv, engine)) is not None:
            return Availability(available=False, reason=reason)
        try:
            result = found.availability(model, platform)
        except Exception as exc:  # a buggy plugin must not break `xinfctl engines`
            log.exception("availability check of engine %s failed", engine)
            return Availability(available=False, reason=f"availability check failed: {exc}")
        if not isinstance(result, Availability):
            raise PluginError(f"engine {engine!r}: availability() must return an Availability")
        return result

    def launch_spec(self, engine: str, model: ModelSpec, replica: ReplicaContext) -> LaunchSpec:
        """The process to spawn for one replica; unknown or invalid launch options are a 400 naming them."""
        found = self.engine(engine)
        check_launch_options(found, replica.options)
        try:
            result = found.launch(model, replica)
        except ValueError as exc:  # the contract: a bad launch option is a ValueError naming it
            raise InvalidRequestError(f"engine {engine!r}: {exc}", param="options") from exc
        if not isinstance(result, LaunchSpec):
            raise PluginError(f"engine {engine!r}: launch() must return a LaunchSpec")
        return result

    def load(self, engine: str, model: ModelSpec, replica: ReplicaContext) -> LoadedModel:
        """Load the model object inside the worker process."""
        result = self.engine(engine).load(model, replica)
        if not isinstance(result, TextModel | EmbeddingModel | RerankModel | ImageModel):
            raise PluginError(
                f"engine {engine!r}: load() returned {type(result).__name__}, which implements none of "
                "TextModel, EmbeddingModel, RerankModel and ImageModel (xinfd.types)"
            )
        return result


def check_launch_options(engine: Engine, options: Mapping[str, Any]) -> None:
    """Refuse launch options the engine does not declare in ``launch_options`` (a typo, not something to ignore).

    :raises InvalidRequestError: naming the unknown options and listing the known ones.
    """
    known = engine.launch_options
    if known is None:
        return  # the engine checks option names itself
    unknown = sorted(set(options) - set(known))
    if unknown:
        listed = ", ".join(sorted(known)) or "none"
        raise InvalidRequestError(
            f"unknown launch option(s) for {engine.name}: {', '.join(unknown)} (known: {listed})", param="options"
        )


def contract_violations(engine: object) -> list[str]:
    """What ``engine`` lacks or has wrong against the ``Engine`` protocol (empty: it implements it)."""
    problems = [f"missing attribute {name!r}" for name in hookspecs.ENGINE_ATTRIBUTES if not hasattr(engine, name)]
    problems += [
        f"missing method {name}()" for name in hookspecs.ENGINE_METHODS if not callable(getattr(engine, name, None))
    ]
    if problems:
        return problems
    attrs: dict[str, Any] = {name: getattr(engine, name) for name in hookspecs.ENGINE_ATTRIBUTES}
    options = attrs["launch_options"]
    checks = (
        ("name", isinstance(attrs["name"], str) and bool(attrs["name"]), "a non-empty string"),
        (
            "abilities",
            isinstance(attrs["abilities"], tuple) and all(a in _ABILITIES for a in attrs["abilities"]),
            f"a tuple of {', '.join(sorted(_ABILITIES))}",
        ),
        ("description", isinstance(attrs["description"], str), "a string"),
        ("probe_module", attrs["probe_module"] is None or isinstance(attrs["probe_module"], str), "a str or None"),
        ("loads_weights_folder", isinstance(attrs["loads_weights_folder"], bool), "a bool"),
        (
            "launch_options",
            attrs["launch_options"] is None
            or (isinstance(options, frozenset) and all(isinstance(o, str) for o in options)),
            "a frozenset of option names or None",
        ),
    )
    return [f"{name} must be {what}, got {attrs[name]!r}" for name, ok, what in checks if not ok]


_ABILITIES = frozenset(get_args(Ability))


def make_plugin_manager(
    *,
    load_entrypoints: bool = True,
    plugins: Iterable[object] = (),
    env: Mapping[str, str] | None = None,
) -> Plugins:
    """Build the plugin manager: entry points (unless disabled), ``XINFD_PLUGINS`` modules, explicit plugins.

    Engines and models are collected right away, so a misspelled hookimpl or a duplicate engine name is reported
    at start-up, not at the first launch.
    """
    env = os.environ if env is None else env
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    failures: list[PluginFailure] = []
    candidates: list[tuple[str, object]] = []
    if load_entrypoints and env.get(DISABLE_AUTOLOAD_ENV, "") not in ("1", "true", "yes"):
        candidates.extend(_entry_point_plugins(failures))
    for spec in filter(None, (s.strip() for s in env.get(EXTRA_PLUGINS_ENV, "").split(","))):
        loaded = _import_plugin(spec, failures)
        if loaded is not None:
            candidates.append((spec, loaded))
    candidates.extend((_plugin_name(p), p) for p in plugins)

    result = Plugins(pm=pm, failures=failures)
    for name, plugin in candidates:
        _register(result, name, plugin)
    pm.check_pending()
    return result


def _entry_point_plugins(failures: list[PluginFailure]) -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            found.append((f"{ep.name} ({ep.value})", ep.load()))
        except Exception as exc:  # a broken third-party package is skipped, not fatal
            log.error("plugin %s (%s) failed to load, skipped: %s", ep.name, ep.value, exc)
            failures.append(PluginFailure(name=ep.name, error=f"{type(exc).__name__}: {exc}"))
    return found


def _import_plugin(spec: str, failures: list[PluginFailure]) -> object | None:
    module_name, _, attr = spec.partition(":")
    try:
        module: ModuleType = importlib.import_module(module_name)
        return getattr(module, attr) if attr else module
    except Exception as exc:
        log.error("plugin %s failed to load, skipped: %s", spec, exc)
        failures.append(PluginFailure(name=spec, error=f"{type(exc).__name__}: {exc}"))
        return None


def _plugin_name(plugin: object) -> str:
    return str(getattr(plugin, "__name__", type(plugin).__name__))


def _register(result: Plugins, name: str, plugin: object) -> None:
    """Register one plugin and collect what it declares; undo the registration if it breaks the contract."""
    pm = result.pm
    if pm.is_registered(plugin):
        return
    removed = [hook for hook in hookspecs.REMOVED_HOOKS if callable(getattr(plugin, hook, None))]
    if removed:
        error = (
            f"hook {removed[0]} was removed: register an engine object with xinfd_register_engines "
            "(see xinfd.hookspecs)"
        )
        if len(removed) > 1:
            error += f"; also remove {', '.join(removed[1:])}"
        log.error("plugin %s skipped: %s", name, error)
        result.failures.append(PluginFailure(name=name, error=error))
        return
    try:
        pm.register(plugin, name=name)
    except Exception as exc:  # e.g. a hookimpl with an unknown argument name
        log.error("plugin %s rejected: %s", name, exc)
        result.failures.append(PluginFailure(name=name, error=str(exc)))
        return
    engines: list[Engine] = []
    models: list[ModelSpec] = []
    try:
        # A hookimpl whose name matches no hookspec (a typo) is caught here, per plugin, so only that plugin
        # is skipped.
        pm.check_pending()
        caller = pm.subset_hook_caller
        others = [p for p in pm.get_plugins() if p is not plugin]
        only_this: Any = caller("xinfd_register_engines", remove_plugins=others)
        only_this(register=engines.append)
        only_models: Any = caller("xinfd_register_models", remove_plugins=others)
        only_models(register=models.append)
        seen: set[str] = set()
        for engine in engines:
            problems = contract_violations(engine)
            if problems:
                what = getattr(engine, "name", None) or type(engine).__name__
                raise PluginError(
                    f"engine {what!r} does not implement xinfd.hookspecs.Engine: {'; '.join(problems)}"
                )
            if engine.name in result.engines:
                raise PluginError(
                    f"engine {engine.name!r} is already registered by {result.engine_owner[engine.name]}"
                )
            if engine.name in seen:
                raise PluginError(f"engine {engine.name!r} is registered twice by this plugin")
            seen.add(engine.name)
        for spec in models:
            if not isinstance(spec, ModelSpec):
                raise PluginError(f"registered {type(spec).__name__}, not ModelSpec")
    except Exception as exc:
        log.error("plugin %s skipped: %s", name, exc)
        result.failures.append(PluginFailure(name=name, error=str(exc)))
        pm.unregister(plugin)
        return
    for engine in engines:
        result.engines[engine.name] = engine
        result.engine_owner[engine.name] = name
    for spec in models:
        result.models.setdefault(spec.name, spec)
    log.debug(
        "plugin %s registered engines=%s models=%s", name, [e.name for e in engines], [m.name for m in models]
    )
