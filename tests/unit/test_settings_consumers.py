"""Every declared setting is read by the processes its declaration names, and by no other path.

Static where a process is code we own (an attribute read of the setting in that process's modules), dynamic
where a value must travel (the replica context carries every replica/engine setting). A setting declared for
a consumer that never reads it — the way TOML's max_tokens once showed in `xinfctl config` and capped nothing
— fails here.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from xinfd.config import DECLARATIONS, load_settings
from xinfd.supervisor import replica_settings
from xinfd.types import ReplicaSettings

REPO = Path(__file__).resolve().parents[2]
# Where each consumer's code lives.
PROCESS_CODE = {
    "daemon": [p for p in (REPO / "xinfd").rglob("*.py") if "config" not in p.parts and "cli" not in p.parts
               and "worker" not in p.parts],
    "replica": list((REPO / "xinfd" / "worker").rglob("*.py")),
    "engine": list((REPO / "engines").rglob("*.py")) + list((REPO / "xinfd" / "worker").rglob("*.py")),
    "xinfctl": list((REPO / "xinfd" / "cli").rglob("*.py")),
}
# Declared, checked and shown, but consumed by nothing yet (no builtin engine serves images).
UNCONSUMED = {"text_to_image_batching_size"}


def _attributes_read(files: list[Path]) -> set[str]:
    names: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                names.add(node.attr)
    return names


def _strings(files: list[Path]) -> set[str]:
    return {
        node.value
        for path in files
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


READ = {consumer: _attributes_read(files) for consumer, files in PROCESS_CODE.items()}
XINFCTL_STRINGS = _strings(PROCESS_CODE["xinfctl"])


@pytest.mark.parametrize("name", sorted(DECLARATIONS))
def test_each_consumer_reads_the_setting(name: str) -> None:
    decl = DECLARATIONS[name]
    if not decl.consumers:
        assert name in UNCONSUMED, f"{name} is declared for no process"
        return
    for consumer in decl.consumers:
        if consumer == "xinfctl":
            # xinfctl never imports the daemon's config: it reads the variable from its own environment.
            assert decl.env in XINFCTL_STRINGS, f"xinfctl does not read {decl.env}"
        else:
            assert name in READ[consumer], f"{name} is declared for the {consumer} but no code there reads it"


def test_the_replica_context_carries_exactly_the_replica_and_engine_settings() -> None:
    travelling = {n for n, d in DECLARATIONS.items() if {"replica", "engine"} & set(d.consumers)}
    assert {f.name for f in dataclasses.fields(ReplicaSettings)} == travelling


def test_replica_settings_copy_every_value(tmp_path: Path) -> None:
    settings = load_settings(
        env={"XINFERENCE_HOME": str(tmp_path), "XINFERENCE_BATCH_SIZE": "7", "XINFERENCE_BATCH_INTERVAL": "0.5",
             "XINFERENCE_TEXT_TO_IMAGE_BATCHING_SIZE": "512*512"}
    )
    carried = replica_settings(settings)
    for f in dataclasses.fields(ReplicaSettings):
        assert getattr(carried, f.name) == getattr(settings, f.name), f.name
        assert getattr(carried, f.name) != f.default, f"{f.name}: test a value that differs from the default"
