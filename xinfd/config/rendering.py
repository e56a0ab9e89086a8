"""Text derived from the declarations: the effective config, the reference config and the settings table.

``describe`` prints what a running daemon uses (``xinfd --print-config``, ``xinfctl config``), with where each
value came from and which changed values wait for a restart. ``reference_toml`` is ``etc/xinfd.toml``
(``xinfd --print-reference``; a test keeps the checked-in file equal to it), and ``settings_table`` the
Markdown table of every setting, variable, default and reload rule (``xinfd --settings-table``).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

from xinfd.config.declarations import DECLARATIONS, OTHER_VARIABLES, SECRET_FIELDS, SECTIONS, Declaration, Settings

MASK = "***"
_WIDTH = 110


def _toml_str(text: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f"}
    out = []
    for ch in text:
        if ch in escapes:
            out.append(escapes[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return _toml_str(str(value))  # str, Path, IPv4Network, IPv6Network


def _printable(source: str) -> str:
    # A control character (a newline in a file name) would end the comment and break the TOML.
    return "".join(ch if ch.isprintable() else "?" for ch in source)


def _masked(name: str, value: Any) -> Any:
    if name in SECRET_FIELDS and value is not None:
        return tuple(MASK for _ in value) if isinstance(value, tuple) else MASK
    return value


def describe(settings: Settings, pending: Mapping[str, tuple[Any, str]] | None = None) -> str:
    """The effective settings as TOML, each value followed by a comment saying where it came from.

    The output parses with ``tomllib`` and loads back with ``load_settings(config_path=...)`` to the same
    values, except secrets, printed as ``"***"`` (one per API key). Unset optional values are comments.
    ``pending`` (setting -> (new value, source)) are values a SIGHUP read that need a restart: each is shown
    as a comment under the value in use.
    """
    pending = pending or {}
    lines = ['# Effective xinfd configuration (secrets masked as "***": do not reuse them as is).']
    for name, decl in DECLARATIONS.items():
        if decl.kind == "tables":
            continue  # tables go last (keys after a table header would belong to it)
        value = getattr(settings, name)
        comment = "# from: " + _printable(settings.sources.get(name, "default"))
        if value is None:
            lines.append(f"# {name} is unset  {comment}")
        else:
            lines.append(f"{name} = {toml_value(_masked(name, value))}  {comment}")
        if name in pending:
            new, source = pending[name]
            shown = "unset" if new is None else toml_value(_masked(name, new))
            lines.append(f"#   pending restart: {name} = {shown}  (from: {_printable(source)})")
    for warning in settings.warnings:
        lines.append(f"# warning: {_printable(warning)}")
    gpus_comment = "# from: " + _printable(settings.sources.get("gpus", "default"))
    if not settings.gpus:
        lines.append(f"# no [[gpus]] declared  {gpus_comment}")
    for gpu in settings.gpus:
        lines += ["", f"[[gpus]]  {gpus_comment}", f"index = {gpu.index}"]
        lines += [f"name = {_toml_str(gpu.name)}", f"memory_mb = {gpu.memory_mb}"]
    return "\n".join(lines) + "\n"


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, _WIDTH - 2, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False)


def _default_text(name: str, decl: Declaration) -> str:
    if decl.shown_default is not None:
        return _toml_str(decl.shown_default)
    default = Settings.__dataclass_fields__[name].default
    if default is None:
        return decl.example or '""'
    return toml_value(default)


def _where(decl: Declaration) -> str:
    parts = [f"Environment: {decl.env}"] if decl.env else ["File only"]
    if decl.flag:
        parts.append(f"Flag: {decl.flag}")
    parts.append("SIGHUP applies a change" if decl.reload else "A change needs a restart")
    return ". ".join(parts) + "."


_HEADER = """\
# xinfd — reference configuration (generated: `xinfd --print-reference`; do not edit by hand, edit the
# declarations in xinfd/config/declarations.py).
#
# Install as /etc/xinfd/xinfd.toml (read if it exists), or name another file with $XINFD_CONFIG or the
# daemon's --config option. Precedence, lowest first:
#   built-in defaults  <  this file  <  environment variables  <  command-line flags.
# Every setting below is commented out and shows its default: uncomment a line to change it.
# An environment variable set to the empty string counts as unset. Booleans in the environment accept
# 1/0, true/false, yes/no, on/off; in this file they are TOML booleans (true/false).
# Relative paths in this file are relative to the directory of this file; "~" is expanded.
# A key that is not a setting is reported at start with the closest known name (`xinfd --strict` refuses it).
# The effective configuration, with where each value came from, is what `xinfd --print-config` and
# `xinfctl config` print.
"""

_GPU_TABLES = """\
# Keep [[gpus]] tables at the end of the file: in TOML, keys after a table header belong to that table.
# [[gpus]]
# index = 0
# name = "NVIDIA A100-SXM4-80GB"
# memory_mb = 81920
#
# [[gpus]]
# index = 1
# name = "NVIDIA A100-SXM4-80GB"
# memory_mb = 81920
"""


def _tables(name: str, decl: Declaration) -> list[str]:
    """A setting written as TOML tables: documented after every other key, with a commented example."""
    title = f"# ---- {name}: [[{name}]] tables "
    out = [title + "-" * (_WIDTH - len(title)), ""]
    out += _comment(decl.doc)
    out += _comment(_where(decl))
    if decl.example:
        out += ["# For example, as a shell line (in a systemd unit: `Environment=` followed by the same text):",
                f"#   {decl.example}",
                "# or as JSON (a shell line):",
                '#   XINFD_GPUS=\'[{"index": 0, "name": "NVIDIA A100-SXM4-80GB", "memory_mb": 81920}]\'']
    out.append(_GPU_TABLES)
    return out


def reference_toml() -> str:
    """``etc/xinfd.toml``: every setting, commented out, with its documentation and default."""
    out = [_HEADER]
    for section in SECTIONS:
        out.append(f"# ---- {section} " + "-" * (_WIDTH - 8 - len(section)))
        out.append("")
        for name, decl in DECLARATIONS.items():
            if decl.section != section or decl.kind == "tables":
                continue
            out += _comment(decl.doc)
            if decl.spec:
                out += _comment(f'Spec ({decl.env}): "{decl.spec}"')
            out += _comment(_where(decl))
            out.append(f"# {name} = {_default_text(name, decl)}")
            out.append("")
    for name, decl in DECLARATIONS.items():
        if decl.kind == "tables":
            out += _tables(name, decl)
    return "\n".join(out)


def settings_table() -> str:
    """``docs/settings.md``: a Markdown table of every setting (key, variable, default, reload rule, consumers)."""
    rows = [
        "# xinfd settings",
        "",
        "Generated from the declarations in `xinfd/config/declarations.py` by `xinfd --settings-table` (a test",
        "keeps this file equal to its output). Each setting's documentation is in `etc/xinfd.toml`",
        "(`xinfd --print-reference`). \"read by\": the processes that consume it; replica and engine settings",
        "travel in the replica's context, never as environment variables the replica re-reads.",
        "",
    ]
    rows += ["| TOML key | environment variable | default | on SIGHUP | read by |", "|---|---|---|---|---|"]
    for name, decl in DECLARATIONS.items():
        default = _default_text(name, decl) if Settings.__dataclass_fields__[name].default is not None else "unset"
        rows.append(
            f"| `{name}` | `{decl.env or '-'}` | `{default}` | {'applied' if decl.reload else 'restart'} | "
            f"{', '.join(decl.consumers) or 'nothing yet'} |"
        )
    rows += ["", "Other variables read on purpose (not settings):", ""]
    rows += [f"- `{var}`: {what}" for var, what in OTHER_VARIABLES.items()]
    return "\n".join(rows) + "\n"
