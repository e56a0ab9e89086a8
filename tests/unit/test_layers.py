"""The package's layers, read from the source: each module's ``xinfd`` imports (top level, inside functions and
under ``TYPE_CHECKING`` alike) stay within what its layer may use.

Layers: ``api`` (front end and control API), ``cli`` (xinfctl), ``worker`` (the replica process), ``venvs``
(model virtual environments), ``supervisor`` (model manager), and the core (every other module: types, errors,
events, settings, plugins, slot table...). ``xinfd.daemon`` is the composition root and may import any layer.
That the daemon never imports torch or an engine library at run time is tests/unit/test_daemon_imports.py.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import xinfd

PACKAGE_DIR = Path(xinfd.__file__).parent
LAYERS = ("api", "cli", "worker", "venvs", "supervisor")
COMPOSITION_ROOT = "xinfd.daemon"
CORE = "core"

# Which other layers each layer may import (the core is allowed to all but the cli, which is standard library
# only so that xinfctl starts fast and never depends on daemon internals).
MAY_IMPORT: dict[str, frozenset[str]] = {
    "api": frozenset({CORE, "supervisor", "venvs"}),
    "supervisor": frozenset({CORE, "venvs"}),
    "venvs": frozenset({CORE}),
    "worker": frozenset({CORE}),
    "cli": frozenset(),
    CORE: frozenset({CORE}),
}
# Modules that are gone; an import of one is a layering regression, not just a broken import.
REMOVED = ("xinfd.models",)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else CORE


def xinfd_imports(source: str, module: str, is_package: bool) -> Iterator[str]:
    """Every ``xinfd`` module named by an import in ``source`` (``from a import b`` yields ``a`` and ``a.b``)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    found = []
    own = layer_of(module)
    for target in xinfd_imports(source, module, is_package):
        if target != "xinfd" and not target.startswith("xinfd."):
            continue
        if any(target == gone or target.startswith(gone + ".") for gone in REMOVED):
            found.append(f"{module} imports {target}, which was removed")
            continue
        other = layer_of(target)
        if other == own or module == COMPOSITION_ROOT or target == "xinfd":
            continue
        if other not in MAY_IMPORT[own]:
            found.append(f"{module} ({own}) imports {target} ({other})")
    return found


def all_modules() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def test_the_layers_are_respected() -> None:
    problems = [
        problem
        for path in all_modules()
        for problem in violations(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
    ]
    assert problems == []


def test_the_check_sees_every_layer() -> None:
    seen = {layer_of(module_name(p)) for p in all_modules()}
    assert seen == {*LAYERS, CORE}


@pytest.mark.parametrize(
    ("module", "source"),
    [
        # The inversions this check was written against, each of which existed once.
        ("xinfd.venvs.provider", "from xinfd.models import ReplicaEnvironment\n"),
        ("xinfd.venvs.provider", "from xinfd.supervisor.running import RunningModel\n"),
        ("xinfd.api.streaming", "from xinfd.worker.protocol import parse_chat_request\n"),
        ("xinfd.cli.chat", "from xinfd.config import load_settings\n"),
        # And the rules around them.
        ("xinfd.worker.host", "import xinfd.supervisor\n"),
        ("xinfd.worker.host", "from xinfd.api import state\n"),
        ("xinfd.cli.models", "from xinfd.supervisor import LaunchRequest\n"),
        ("xinfd.cli.models", "from xinfd.api.state import STATE\n"),
        ("xinfd.venvs.cache", "from xinfd.api.state import STATE\n"),
        ("xinfd.venvs.cache", "from xinfd import supervisor\n"),
        ("xinfd.supervisor.manager", "from xinfd.api.state import STATE\n"),
        ("xinfd.gpus", "from xinfd.supervisor.identity import RuntimeLayout\n"),
        ("xinfd.api.streaming", "from ..worker import protocol\n"),
        ("xinfd.daemon", "from xinfd import models\n"),
    ],
)
def test_a_forbidden_import_is_reported(module: str, source: str) -> None:
    assert violations(f"from __future__ import annotations\n{source}", module) != []


def test_allowed_imports_are_not_reported() -> None:
    assert violations("from xinfd.supervisor import ModelManager\nfrom xinfd.venvs import cache\n", "xinfd.api.x") == []
    assert violations("from xinfd.api.openai import make_api_app\n", "xinfd.daemon") == []
    assert violations("from xinfd.openai_protocol import Usage\nfrom . import sse\n", "xinfd.worker.host") == []
