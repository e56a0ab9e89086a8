"""The one validator of names that users choose and xinfd turns into files, directories or headers.

A model name, a model uid, a venv directory component and an environment variable name are checked here and
nowhere else. The check is a *full* match (``re.fullmatch``) of an ASCII-only pattern: ``re.match`` with
``...$`` accepts a trailing ``"\\n"`` (``$`` matches before a final newline), and such a uid would end up in
every response header of its replicas (``X-Xinfd-Replica``) and break them. The character classes are ASCII
ranges, so look-alike letters (Cyrillic ``\u0430``, fullwidth digits) are refused: a name is the same bytes on
disk, in a log line and in a header.

Names that become path components may not contain ``..`` either, so no name can point outside its directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xinfd.errors import InvalidRequestError


@dataclass(frozen=True, slots=True, kw_only=True)
class NameKind:
    """One kind of name: what it is called in messages, its pattern and whether ``..`` is refused."""

    label: str
    pattern: re.Pattern[str]
    rule: str  # the pattern in words, for the error message
    path_component: bool = True

    def accepts(self, value: object) -> bool:
        if not isinstance(value, str) or self.pattern.fullmatch(value) is None:
            return False
        return not (self.path_component and ".." in value)


_SIMPLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
_SIMPLE_RULE = "1-64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'"

# A model family's name: registry files, ``launch`` items, ``model_name`` of a launch request.
MODEL_NAME = NameKind(label="model name", pattern=_SIMPLE, rule=_SIMPLE_RULE)
# A running model's uid: names its log, pid and socket files and goes into response headers.
MODEL_UID = NameKind(label="model uid", pattern=_SIMPLE, rule=_SIMPLE_RULE)
# A directory of the venv cache (``virtualenv/v4/{model_name}/{model_engine}``): model and engine names.
DIRECTORY_NAME = NameKind(
    label="directory name",
    pattern=re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII),
    rule="1-128 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'",
)
# POSIX portable environment variable names (``--env NAME=value``).
ENV_NAME = NameKind(
    label="environment variable name",
    pattern=re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII),
    rule="ASCII letters, digits and '_', not starting with a digit",
    path_component=False,
)


class InvalidNameError(InvalidRequestError):
    """A name does not follow its kind's rule; ``param`` names the field (HTTP 400, ``xinfctl`` exit 2)."""

    def __init__(self, message: str, *, param: str | None, kind: NameKind, value: object) -> None:
        super().__init__(message, param=param)
        self.kind = kind
        self.value = value


def is_valid_name(value: object, kind: NameKind) -> bool:
    """Whether ``value`` is a ``str`` that follows ``kind``'s rule (full match, no trailing newline)."""
    return kind.accepts(value)


def check_name(value: object, kind: NameKind, *, param: str | None, context: str | None = None) -> str:
    """``value`` if it is a valid name of ``kind``, else ``InvalidNameError`` naming ``param``.

    :param value: the candidate (any JSON value: a non-string is refused with the same message).
    :param kind: ``MODEL_NAME``, ``MODEL_UID``, ``DIRECTORY_NAME`` or ``ENV_NAME``.
    :param param: the request field the value came from (the error's ``param``), or None.
    :param context: where the value came from, prefixed to the message (for example a file name).
    """
    if kind.accepts(value):
        assert isinstance(value, str)  # accepts() checked it; this narrows the type for mypy
        return value
    prefix = f"{context}: " if context else ""
    field = f" ({param})" if param else ""
    raise InvalidNameError(
        f"{prefix}invalid {kind.label} {value!r}{field}: expected {kind.rule}", param=param, kind=kind, value=value
    )
