"""Model families as data: builtin ones from the package's ``xinfd/data/models/*.json``, user registrations under
``$XINFERENCE_HOME/models/*.json`` (``xinfctl register --file spec.json``).

A family file is one JSON object whose keys are ``ModelSpec`` fields (``name``, ``abilities``, ``engines``,
``context_length``, ``description``, ``virtualenv``, ``extra``, ``default_max_tokens``, ``sampling``); any other
key (``formats``, ``sources``, ``chat_template``...) is kept in ``extra`` for the engines. The files are the source
of truth: the registry has no state of its own, so the control API re-reads them, and a registration survives
restarts.

Precedence: a family shipped by a plugin (``xinfd_register_models``) keeps its name; a builtin family comes
next; a user registration may not reuse a builtin or plugin name (unregistering it could not bring the
original back without a restart, and two meanings of one name confuse every log line).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from xinfd.atomic import PRIVATE, write_atomic
from xinfd.errors import InvalidRequestError, UnknownModelError
from xinfd.names import MODEL_NAME, check_name
from xinfd.sampling_defaults import family_sampling
from xinfd.types import ModelSpec

log = logging.getLogger(__name__)


def _builtin_dir() -> Path:
    """The builtin families, package data of ``xinfd`` so that a wheel carries them (a path beside the package,
    such as the source tree's ``etc/``, exists only in a checkout). The registry globs and re-reads the files,
    so it needs a real directory: pip and uv install wheels unpacked, never as a zip. Found beside this module
    rather than through ``importlib.resources``, which would cost the idle daemon its import (and zipfile's)."""
    found = Path(__file__).resolve().parent / "data" / "models"
    if not found.is_dir():
        raise RuntimeError(f"xinfd's builtin model families are missing ({found}): install xinfd unpacked")
    return found


BUILTIN_DIR = _builtin_dir()
_ABILITIES = ("chat", "generate", "embed", "rerank", "image", "vision")
_FIELDS = frozenset(f.name for f in fields(ModelSpec))


def spec_from_json(data: Any, where: str) -> ModelSpec:
    """Validate one family object; every problem names ``where`` and the field."""
    if not isinstance(data, dict):
        raise InvalidRequestError(f"{where}: a model spec must be a JSON object")
    name = check_name(data.get("name"), MODEL_NAME, param="name", context=where)
    abilities = data.get("abilities")
    if not isinstance(abilities, list) or not abilities or any(a not in _ABILITIES for a in abilities):
        raise InvalidRequestError(
            f"{where}: 'abilities' must be a non-empty list of {', '.join(_ABILITIES)}", param="abilities"
        )
    engines = data.get("engines")
    if not isinstance(engines, list) or not engines or not all(isinstance(e, str) and e for e in engines):
        raise InvalidRequestError(
            f"{where}: 'engines' must be a non-empty list of engine names", param="engines"
        )
    context = data.get("context_length", 2048)
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise InvalidRequestError(
            f"{where}: 'context_length' must be a positive integer", param="context_length"
        )
    virtualenv = data.get("virtualenv", {})
    if not isinstance(virtualenv, dict) or not isinstance(virtualenv.get("packages", []), list):
        raise InvalidRequestError(
            f"{where}: 'virtualenv' must be an object with a 'packages' list", param="virtualenv"
        )
    extra = data.get("extra", {})
    if not isinstance(extra, dict):
        raise InvalidRequestError(f"{where}: 'extra' must be an object", param="extra")
    extra = {**{k: v for k, v in data.items() if k not in _FIELDS}, **extra}
    budget = data.get("default_max_tokens")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise InvalidRequestError(
            f"{where}: 'default_max_tokens' must be a positive integer", param="default_max_tokens"
        )
    return ModelSpec(
        name=name,
        abilities=tuple(abilities),
        engines=tuple(e.lower() for e in engines),
        context_length=context,
        description=str(data.get("description", "")),
        virtualenv=virtualenv,
        extra=extra,
        default_max_tokens=budget,
        sampling=family_sampling(data.get("sampling"), where),
    )


def spec_to_json(spec: ModelSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "abilities": list(spec.abilities),
        "engines": list(spec.engines),
        "context_length": spec.context_length,
        "description": spec.description,
        "virtualenv": dict(spec.virtualenv),
        "extra": dict(spec.extra),
        **({"default_max_tokens": spec.default_max_tokens} if spec.default_max_tokens is not None else {}),
        **({"sampling": dict(spec.sampling)} if spec.sampling else {}),
    }


def load_dir(directory: Path) -> dict[str, ModelSpec]:
    """Every ``*.json`` family in ``directory``; a broken file is logged and skipped, never fatal."""
    specs: dict[str, ModelSpec] = {}
    if not directory.is_dir():
        return specs
    for path in sorted(directory.glob("*.json")):
        try:
            spec = spec_from_json(json.loads(path.read_text()), str(path))
        except (OSError, ValueError, InvalidRequestError) as exc:
            log.error("model spec %s skipped: %s", path, exc)
            continue
        specs[spec.name] = spec
    return specs


class ModelRegistry:
    """Builtin and user families, over the files in ``builtin_dir`` and ``user_dir``."""

    def __init__(self, user_dir: Path, builtin_dir: Path = BUILTIN_DIR) -> None:
        self.user_dir = user_dir
        self.builtin_dir = builtin_dir

    @classmethod
    def for_home(cls, home: Path) -> ModelRegistry:
        return cls(home / "models" / "registrations")

    def builtin(self) -> dict[str, ModelSpec]:
        return load_dir(self.builtin_dir)

    def registrations(self) -> dict[str, ModelSpec]:
        return load_dir(self.user_dir)

    def install(self, families: MutableMapping[str, ModelSpec]) -> None:
        """Add builtin, then user families to ``families`` (the plugins' dict) without replacing any."""
        for spec in (*self.builtin().values(), *self.registrations().values()):
            families.setdefault(spec.name, spec)

    def register(self, data: Any, families: MutableMapping[str, ModelSpec]) -> ModelSpec:
        """Validate and store a user family (replacing an earlier registration of the same name)."""
        spec = spec_from_json(data, "model spec")
        mine = self.registrations()
        if spec.name in families and spec.name not in mine:
            raise InvalidRequestError(
                f"model {spec.name!r} is a builtin or plugin family; register it under another name",
                param="name",
            )
        self.user_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(spec_to_json(spec), indent=2) + "\n"
        write_atomic(self.user_dir / f"{spec.name}.json", text, mode=PRIVATE)
        families[spec.name] = spec
        log.info("model family %s registered", spec.name)
        return spec

    def unregister(self, name: str, families: MutableMapping[str, ModelSpec]) -> None:
        if name not in self.registrations():
            raise UnknownModelError(
                f"{name!r} is not a user registration "
                f"(registered: {', '.join(sorted(self.registrations())) or 'none'})"
            )
        (self.user_dir / f"{name}.json").unlink()
        families.pop(name, None)
        log.info("model family %s unregistered", name)


def describe(spec: ModelSpec, source: str) -> Mapping[str, Any]:
    return {
        "model_name": spec.name,
        "source": source,
        "abilities": list(spec.abilities),
        "engines": list(spec.engines),
        "context_length": spec.context_length,
        "description": spec.description,
    }
