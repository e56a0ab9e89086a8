"""Which engines a model's ``virtualenv`` block is written for (spec "ModelHub JSON": "If a new model supports
a specific engine, you must include at least one package entry for that engine in virtualenv.packages and
attach a marker ... Engine availability checks rely on these markers when virtual environments are enabled").

An entry is *engine-specific* when its marker compares ``#engine#``/``#model_engine#``, or when it is an
engine placeholder (``#vllm_dependencies#``). With venvs on, an engine is offered for a model when:

* the block has no packages, or no engine-specific entry at all (a plain list applies to every engine), or
* some engine-specific entry applies to it: its marker holds with ``#engine#`` set to the engine (and this
  host's PEP 508 values), or, for a placeholder without an engine marker, the placeholder is the engine's.

Core, not ``xinfd.venvs``: ``Plugins.availability`` applies it, so every engine gets the rule without
writing it. An entry whose marker cannot be parsed counts as applying: the launch then reports the bad entry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

_PLACEHOLDER_RE = re.compile(r"^#([a-z0-9_]+)_dependencies#$")
ENGINE_TOKEN_RE = re.compile(r"#(?:model_)?engine#")
# PEP 508 has no "literal == literal" comparison, so #engine# becomes a marker variable whose value we set
# (the same substitution as xinfd.venvs.spec).
ENGINE_VARIABLE = "platform_release"


def placeholder_name(engine: str) -> str:
    """``llama.cpp`` -> ``llama_cpp``: the name in ``#<name>_dependencies#``."""
    return re.sub(r"[.-]", "_", engine)


def _holds(marker: str, engine: str) -> bool:
    if not marker.strip():
        return True
    # packaging is imported here, not at the top: the daemon's start never evaluates a marker (idle memory).
    from packaging.markers import (
        InvalidMarker,
        Marker,
        UndefinedComparison,
        UndefinedEnvironmentName,
        default_environment,
    )

    try:
        parsed = Marker(ENGINE_TOKEN_RE.sub(ENGINE_VARIABLE, marker.strip()))
        env: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
        return bool(parsed.evaluate({**env, ENGINE_VARIABLE: engine}))
    except (InvalidMarker, UndefinedComparison, UndefinedEnvironmentName):
        return True


def venv_entry_reason(virtualenv: Mapping[str, Any] | None, engine: str) -> str | None:
    """Why ``engine`` is not offered for a model with this ``virtualenv`` block when venvs are on (``None``:
    it is offered). See the module docstring for the rule."""
    packages = (virtualenv or {}).get("packages") or []
    if not isinstance(packages, list | tuple):
        return None  # invalid blocks are the launch's error to report, naming the field
    specific = False
    for entry in packages:
        if not isinstance(entry, str):
            return None
        head, _, marker = entry.partition(";")
        placeholder = _PLACEHOLDER_RE.match(head.strip())
        marked = bool(ENGINE_TOKEN_RE.search(marker))
        if not placeholder and not marked:
            continue
        specific = True
        # An engine marker decides; a placeholder without one is its own engine's, under any other marker.
        mine = _holds(marker, engine) if marked else (
            placeholder is not None and placeholder.group(1) == placeholder_name(engine) and _holds(marker, engine))
        if mine:
            return None
    if not specific:
        return None
    return (f"virtualenv.packages has no entry for engine {engine!r} (with virtual environments enabled an "
            f"engine needs an entry marked '#engine# == \"{engine}\"' or the "
            f"#{placeholder_name(engine)}_dependencies# placeholder)")


def engines_offered(virtualenv: Mapping[str, Any] | None, engines: Sequence[str]) -> list[str]:
    """The subset of ``engines`` the block is written for (order kept)."""
    return [e for e in engines if venv_entry_reason(virtualenv, e) is None]
