"""Output helpers of xinfctl: human tables and JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers], *[["-" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def families_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Model families (builtin, plugin or registered) as ``xinfctl families`` and ``registrations`` show them."""
    return table(
        [(r["model_name"], ",".join(r["abilities"]), ",".join(r["engines"]), r["context_length"]) for r in rows],
        ("MODEL", "ABILITIES", "ENGINES", "CONTEXT"),
    )
