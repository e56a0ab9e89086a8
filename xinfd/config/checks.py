"""How one setting's value is parsed and checked: value kinds and the per-setting checks.

A value arrives either as text (an environment variable, or a string flag) or typed (TOML, or a typed flag).
``from_text`` turns text into the typed form, ``typed`` checks a typed value, and a setting's own check
validates and normalises it. A problem is raised as ``Invalid`` with a message that says what is wrong but
not where; the loader prefixes the file and key, the variable or the flag.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from xinfd.names import MODEL_NAME, is_valid_name
from xinfd.types import GpuInfo

IPNetwork = IPv4Network | IPv6Network
Kind = Literal["int", "seconds", "bool", "str", "path", "list", "tables"]
Check = Callable[[Any], Any]


class Invalid(ValueError):
    """A value is wrong; the message says why, without saying where (the caller adds that)."""


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
EXPECTS: Final[dict[str, str]] = {
    "int": "an integer",
    "seconds": "a number of seconds",
    "bool": "a boolean (1/0, true/false, yes/no, on/off)",
    "str": "a string",
    "path": "a path",
    "list": "a list of strings",
    "tables": "TOML tables",  # checked by the setting's own check, which knows the tables' name
}


def from_text(kind: Kind, raw: str) -> object:
    """The typed form of a textual value (environment variables, string flags); lists are comma-separated."""
    text = raw.strip()
    try:
        if kind == "int":
            return int(text)
        if kind == "seconds":
            return float(text)
    except ValueError:
        raise Invalid(f"expected {EXPECTS[kind]}, got {raw!r}") from None
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise Invalid(f"expected {EXPECTS[kind]}, got {raw!r}")
    if kind == "list":
        return [item.strip() for item in text.split(",")]
    if kind == "tables":
        raise Invalid("has no text form")  # a declaration of this kind brings its own parser (parse_text)
    return text


def typed(kind: Kind, value: object) -> object:
    """Check the type of a TOML (or typed flag) value."""
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "seconds": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "path": isinstance(value, str | Path),
        "list": isinstance(value, list | tuple) and all(isinstance(v, str) for v in value),
        "tables": True,
    }[kind]
    if not ok:
        raise Invalid(f"expected {EXPECTS[kind]}, got {type(value).__name__} {value!r}")
    if kind == "seconds":
        return float(value)  # type: ignore[arg-type]  # checked just above
    if kind == "list":
        return list(value)  # type: ignore[call-overload]  # checked just above
    return value


def same(value: Any) -> Any:
    return value


def at_least(minimum: int, maximum: int | None = None) -> Callable[[int], int]:
    def check(value: int) -> int:
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise Invalid(f"must be an integer {bound}, got {value}")
        return value

    return check


def seconds(*, allow_zero: bool) -> Callable[[float], float]:
    def check(value: float) -> float:
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise Invalid(f"must be a number of seconds {'>= 0' if allow_zero else '> 0'}, got {value}")
        return value

    return check


def non_empty(value: str) -> str:
    if not value:
        raise Invalid("must not be empty (leave the setting out to unset it)")
    return value


def host(value: str) -> str:
    if not value or any(ch.isspace() for ch in value):
        raise Invalid(f"expected a host name or IP address, got {value!r}")
    return value


def path(value: str | Path) -> Path:
    if not str(value):
        raise Invalid("expected a path, got ''")
    return Path(value).expanduser()


def choice(options: tuple[str, ...], *, upper: bool) -> Callable[[str], str]:
    def check(value: str) -> str:
        normal = value.strip().upper() if upper else value.strip().lower()
        if normal not in options:
            raise Invalid(f"expected one of {', '.join(options)}, got {value!r}")
        return normal

    return check


def url(value: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  # raises ValueError on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"expected an http:// or https:// URL, got {value!r}")
    return value


def image_size(value: str) -> str:
    match = re.fullmatch(r"\s*([0-9]+)\s*\*\s*([0-9]+)\s*", value)
    if match is None or int(match[1]) == 0 or int(match[2]) == 0:
        raise Invalid(f"expected WIDTH*HEIGHT with positive integers (e.g. 1024*1024), got {value!r}")
    return f"{int(match[1])}*{int(match[2])}"


def networks(items: list[str]) -> tuple[IPNetwork, ...]:
    result = []
    for item in items:
        try:
            # strict=False: "10.0.0.1/24" means the network 10.0.0.0/24, as people write it in firewall rules.
            result.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise Invalid(f"{item!r} is not an IP address or CIDR block") from None
    return tuple(result)


def keys(items: list[str]) -> tuple[str, ...]:
    # An empty item is refused rather than skipped: "XINFD_API_KEYS=," must not silently mean "no keys".
    if any(not item.strip() for item in items):
        raise Invalid("empty API key in the list")
    return tuple(item.strip() for item in items)


_HOST_NAME = re.compile(r"(\*|(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?)", re.ASCII)


def host_names(items: list[str]) -> tuple[str, ...]:
    """Host names the front end answers to: ``name``, ``*.domain`` or ``*`` (any); IP literals too."""
    result = []
    for item in items:
        text = item.strip().lower()
        literal = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            if _HOST_NAME.fullmatch(text) is None or len(text) > 253:
                raise Invalid(f"{item!r} is not a host name (name, *.domain, * or an IP address)") from None
        result.append(text.rstrip("."))
    return tuple(result)


def origins(items: list[str]) -> tuple[str, ...]:
    """Browser origins allowed cross-origin: ``scheme://host[:port]`` exactly as browsers send them, or ``*``."""
    result = []
    for item in items:
        text = item.strip()
        if text == "*":
            result.append(text)
            continue
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018  # raises ValueError on a bad port
        except ValueError:
            parts = None
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or parts.username is not None
        ):
            raise Invalid(f"{item!r} is not an origin (scheme://host[:port], e.g. https://app.example.com)")
        result.append(f"{parts.scheme}://{parts.netloc.lower()}")
    return tuple(result)


def _lookup(kind: str, name: str) -> int | None:
    import grp
    import pwd

    try:
        if kind == "user":
            return pwd.getpwnam(name).pw_uid
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def group_name(value: str) -> str:
    # Resolved when the socket is created (a missing group stops the daemon there with one line), not here,
    # so a config file can be checked on a machine without the group.
    value = value.strip()
    if not value or any(ch.isspace() or ch in ":/," for ch in value):
        raise Invalid(f"expected a group name or numeric gid, got {value!r}")
    return value


def principals(kind: str) -> Callable[[list[str]], tuple[str, ...]]:
    """Users or groups named by name or numeric id (for SO_PEERCRED checks on the control socket)."""

    def check(items: list[str]) -> tuple[str, ...]:
        result = []
        for item in (i.strip() for i in items):
            if not item or (not item.isdigit() and _lookup(kind, item) is None):
                raise Invalid(f"no {kind} named {item!r}")
            result.append(item)
        return tuple(result)

    return check


def launch_item(item: str) -> tuple[str, int]:
    """``"NAME"`` or ``"NAME:REPLICAS"`` -> (name, replicas)."""
    text = item.strip()
    name, colon, count = text.rpartition(":")
    if not colon:
        name, count = text, "1"
    if not re.fullmatch(r"[0-9]+", count) or int(count) < 1:
        raise Invalid(f"{item!r}: replicas must be an integer >= 1")
    # The name becomes a directory name under XINFERENCE_HOME, so nothing that could escape it.
    if not is_valid_name(name, MODEL_NAME):
        raise Invalid(f"{item!r}: expected NAME or NAME:REPLICAS with a model name of {MODEL_NAME.rule}")
    return name, int(count)


def launch_list(items: list[str]) -> tuple[str, ...]:
    result: list[str] = []
    seen: set[str] = set()
    for item in items:
        name, replicas = launch_item(item)
        if name in seen:
            raise Invalid(f"model {name!r} is listed twice")
        seen.add(name)
        result.append(f"{name}:{replicas}" if ":" in item else name)
    return tuple(result)


def engine_names(items: list[str]) -> tuple[str, ...]:
    """Engine names (``transformers``, ``sentence_transformers``...), each once; which exist is the plugins' to
    say, so an unknown one is the daemon's warning at start, not a config error."""
    result: list[str] = []
    for item in items:
        name = item.strip()
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
            raise Invalid(f"{item!r} is not an engine name (letters, digits, '_', '.', '-')")
        if name in result:
            raise Invalid(f"engine {name!r} is listed twice")
        result.append(name)
    return tuple(result)


GPU_KEYS: Final = ("index", "name", "memory_mb")
GPU_TEXT_FORM: Final = "INDEX:NAME:MEMORY_MB[,INDEX:NAME:MEMORY_MB...]"


def gpus_from_text(raw: str) -> object:
    """The environment's form of ``[[gpus]]``: ``0:NVIDIA A100-SXM4-80GB:81920,1:NVIDIA A100-SXM4-80GB:81920``.

    Why this form: it needs no quotes or braces, so it survives a shell, ``podman run -e`` and a systemd
    ``Environment=`` line as is (a name with spaces only needs the usual quotes around the whole assignment).
    The name is everything between the first and the last colon, so it may hold colons; devices are
    separated by commas, so a name may not hold one: such a name takes the JSON form, the same fields as the
    TOML tables (``[{"index": 0, "name": "...", "memory_mb": 81920}]``), recognised by its leading ``[``.
    """
    text = raw.strip()
    if text.startswith(("[", "{")):  # "{": a JSON object where a list was meant, reported as such below
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise Invalid(f"invalid JSON: {exc.msg} at character {exc.pos}") from None
        return value  # its shape is gpu_tables' to check
    tables: list[dict[str, object]] = []
    for n, item in enumerate(part.strip() for part in text.split(",")):
        index, sep, rest = item.partition(":")
        name, sep2, memory = rest.rpartition(":")
        if not sep or not sep2 or not name.strip():
            raise Invalid(f"device {n} {item!r}: expected INDEX:NAME:MEMORY_MB (all devices: {GPU_TEXT_FORM})")
        if not index.strip().isdigit():
            raise Invalid(f"device {n} {item!r}: index must be an integer >= 0, got {index.strip()!r}")
        if not memory.strip().isdigit():
            raise Invalid(f"device {n} {item!r}: memory_mb must be an integer > 0 (MiB), got {memory.strip()!r}")
        tables.append({"index": int(index), "name": name.strip(), "memory_mb": int(memory)})
    return tables


def gpu_tables(value: object) -> tuple[GpuInfo, ...]:
    """``[[gpus]]`` tables (from the file, or parsed from the environment) -> the declared devices.

    Messages start with the device's position (``[1].index: ...``) so the loader can name it as
    ``gpus[1].index`` or ``XINFD_GPUS[1].index``.
    """
    if not isinstance(value, list | tuple) or not all(isinstance(table, dict) for table in value):
        raise Invalid(f"expected [[gpus]] tables, got {type(value).__name__}")
    gpus: list[GpuInfo] = []
    for n, table in enumerate(value):
        here = f"[{n}]"
        for key in table:
            if key not in GPU_KEYS:
                import difflib  # only for a misspelled key: not loaded by a daemon whose settings are valid

                close = difflib.get_close_matches(str(key), GPU_KEYS, n=1, cutoff=0.75)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise Invalid(f"{here}: unknown key {key!r}{hint}")
        for key in GPU_KEYS:
            if key not in table:
                raise Invalid(f"{here}: missing key {key!r}")
        index, name, memory = table["index"], table["name"], table["memory_mb"]
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise Invalid(f"{here}.index: must be an integer >= 0, got {index!r}")
        if not isinstance(name, str) or not name:
            raise Invalid(f"{here}.name: must be a non-empty string, got {name!r}")
        if not isinstance(memory, int) or isinstance(memory, bool) or memory <= 0:
            raise Invalid(f"{here}.memory_mb: must be an integer > 0, got {memory!r}")
        if any(gpu.index == index for gpu in gpus):
            raise Invalid(f"{here}.index: duplicate GPU index {index}")
        gpus.append(GpuInfo(index=index, name=name, memory_mb=memory))
    return tuple(gpus)
