"""Settings of the xinfd daemon: defaults < TOML file < environment variables < command-line flags.

Why this shape: packagers configure the daemon with a file in ``/etc``, containers and systemd units with
environment variables (the ``XINFERENCE_*`` names Xinference users already know, ``XINFD_*`` for what is new
here), and a person at a shell with flags; each layer overrides the one before without editing it. Every value
is validated here, once, before anything starts: a bad setting stops the daemon with one line naming the key
or variable and the problem, instead of failing later inside a replica launch. ``Settings.sources`` records
where each value came from, so ``describe()`` can answer "why is the port 8000?".
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

from xinfd.errors import ConfigError
from xinfd.names import MODEL_NAME, is_valid_name
from xinfd.types import GpuInfo

IPNetwork = IPv4Network | IPv6Network

# Read only if it exists; a module attribute (not a default argument) so tests can point it elsewhere.
DEFAULT_CONFIG_PATH: Path = Path("/etc/xinfd/xinfd.toml")
# Names a config file; an explicit ``config_path`` wins over it. Not a setting itself, so not in ENV_VARS.
CONFIG_ENV_VAR: Final = "XINFD_CONFIG"

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MODEL_SOURCES: Final = ("huggingface", "modelscope", "csghub")
LAUNCH_STRATEGIES: Final = ("IDLE_FIRST_LAUNCH_STRATEGY", "PACK_FIRST_LAUNCH_STRATEGY")
SECRET_FIELDS: Final = frozenset({"api_keys", "metrics_api_keys", "csg_token"})
MASK: Final = "***"


def _no_sources() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The effective configuration of one daemon. Built by ``load_settings``; plain data, no behaviour.

    ``sources`` maps each field name to where its value came from: ``"default"``, ``"file /path/x.toml"``,
    ``"env XINFERENCE_X"`` or ``"flag --port"``.
    """

    home: Path
    host: str = "127.0.0.1"
    port: int = 9997
    control_socket: Path
    log_level: str = "INFO"
    endpoint: str = "http://127.0.0.1:9997"
    model_src: str = "huggingface"
    health_check_failure_threshold: int = 5
    health_check_interval: float = 5.0
    health_check_timeout: float = 10.0
    disable_health_check: bool = False
    disable_metrics: bool = False
    download_max_attempts: int = 3
    text_to_image_batching_size: str | None = None
    sse_ping_attempts_seconds: float = 600.0
    max_tokens: int | None = None
    allowed_ips: tuple[IPNetwork, ...] = ()
    trusted_proxies: tuple[IPNetwork, ...] = ()
    api_keys: tuple[str, ...] = ()
    # Front end and operations (issue 6): scrape-only keys, control-socket access, drain, streams, log rotation.
    metrics_api_keys: tuple[str, ...] = ()
    control_socket_group: str | None = None
    control_allowed_users: tuple[str, ...] = ()
    control_allowed_groups: tuple[str, ...] = ()
    drain_timeout: float = 30.0
    stream_write_timeout: float = 30.0
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 3
    batch_size: int = 32
    batch_interval: float = 0.003
    allow_multi_replica_per_gpu: bool = True
    launch_strategy: str = "IDLE_FIRST_LAUNCH_STRATEGY"
    enable_virtual_env: bool = True
    virtual_env_skip_installed: bool = True
    virtual_env_build_timeout: float = 1800.0
    # Wheels built from source with an engine's settings (llama-cpp-python), shared by all venvs (issue 5).
    wheel_cache: Path | None = None
    csg_token: str | None = None
    csg_endpoint: str = "https://hub-stg.opencsg.com/"
    stop_grace_period: float = 10.0
    launch_timeout: float = 600.0
    # Routing (issue 4): requests in flight per replica, then a bounded wait queue per model (full -> 429).
    replica_max_concurrency: int = 64
    model_queue_size: int = 256
    # Replica restarts (issue 4): first backoff delay (doubling up to 30 s), and restarts in a row before FAILED.
    restart_backoff: float = 0.5
    restart_budget: int = 5
    gpus: tuple[GpuInfo, ...] = ()
    launch: tuple[str, ...] = ()
    sources: Mapping[str, str] = field(default_factory=_no_sources)


# Environment variable -> field. XINFERENCE_* names and meanings follow the Xinference environment-variables
# spec; XINFD_* ones are this daemon's own.
ENV_VARS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "XINFERENCE_HOME": "home",
        "XINFD_HOST": "host",
        "XINFD_PORT": "port",
        "XINFD_CONTROL_SOCKET": "control_socket",
        "XINFD_LOG_LEVEL": "log_level",
        "XINFERENCE_ENDPOINT": "endpoint",
        "XINFERENCE_MODEL_SRC": "model_src",
        "XINFERENCE_HEALTH_CHECK_FAILURE_THRESHOLD": "health_check_failure_threshold",
        "XINFERENCE_HEALTH_CHECK_INTERVAL": "health_check_interval",
        "XINFERENCE_HEALTH_CHECK_TIMEOUT": "health_check_timeout",
        "XINFERENCE_DISABLE_HEALTH_CHECK": "disable_health_check",
        "XINFERENCE_DISABLE_METRICS": "disable_metrics",
        "XINFERENCE_DOWNLOAD_MAX_ATTEMPTS": "download_max_attempts",
        "XINFERENCE_TEXT_TO_IMAGE_BATCHING_SIZE": "text_to_image_batching_size",
        "XINFERENCE_SSE_PING_ATTEMPTS_SECONDS": "sse_ping_attempts_seconds",
        "XINFERENCE_MAX_TOKENS": "max_tokens",
        "XINFERENCE_ALLOWED_IPS": "allowed_ips",
        "XINFD_TRUSTED_PROXIES": "trusted_proxies",
        "XINFD_API_KEYS": "api_keys",
        "XINFD_METRICS_API_KEYS": "metrics_api_keys",
        "XINFD_CONTROL_SOCKET_GROUP": "control_socket_group",
        "XINFD_CONTROL_ALLOWED_USERS": "control_allowed_users",
        "XINFD_CONTROL_ALLOWED_GROUPS": "control_allowed_groups",
        "XINFD_DRAIN_TIMEOUT": "drain_timeout",
        "XINFD_STREAM_WRITE_TIMEOUT": "stream_write_timeout",
        "XINFD_LOG_MAX_BYTES": "log_max_bytes",
        "XINFD_LOG_BACKUPS": "log_backups",
        "XINFERENCE_BATCH_SIZE": "batch_size",
        "XINFERENCE_BATCH_INTERVAL": "batch_interval",
        "XINFERENCE_ALLOW_MULTI_REPLICA_PER_GPU": "allow_multi_replica_per_gpu",
        "XINFERENCE_LAUNCH_STRATEGY": "launch_strategy",
        "XINFERENCE_ENABLE_VIRTUAL_ENV": "enable_virtual_env",
        "XINFERENCE_VIRTUAL_ENV_SKIP_INSTALLED": "virtual_env_skip_installed",
        "XINFD_VIRTUAL_ENV_BUILD_TIMEOUT": "virtual_env_build_timeout",
        "XINFD_WHEEL_CACHE": "wheel_cache",
        "XINFERENCE_CSG_TOKEN": "csg_token",
        "XINFERENCE_CSG_ENDPOINT": "csg_endpoint",
        "XINFD_STOP_GRACE_PERIOD": "stop_grace_period",
        "XINFD_LAUNCH_TIMEOUT": "launch_timeout",
        "XINFD_REPLICA_MAX_CONCURRENCY": "replica_max_concurrency",
        "XINFD_MODEL_QUEUE_SIZE": "model_queue_size",
        "XINFD_RESTART_BACKOFF": "restart_backoff",
        "XINFD_RESTART_BUDGET": "restart_budget",
        "XINFD_LAUNCH": "launch",
    }
)

# ------------------------------------------------------------------------------------------------------------
# Parsing. A value arrives either as text (environment, or a string flag) or typed (TOML, or a typed flag);
# ``_from_text`` turns text into the typed form, ``_typed`` checks the type, and a per-field check validates
# and normalises. Problems are raised as ``_Invalid``; the caller prefixes where the value came from.


class _Invalid(ValueError):
    """A value is wrong; the message says why, without saying where (the caller adds that)."""


@dataclass(frozen=True, slots=True)
class _Spec:
    kind: str  # "int", "seconds", "bool", "str", "path" or "list"
    check: Callable[[Any], Any]


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
_KIND_EXPECTS: Final = {
    "int": "an integer",
    "seconds": "a number of seconds",
    "bool": "a boolean (1/0, true/false, yes/no, on/off)",
    "str": "a string",
    "path": "a path",
    "list": "a list of strings",
}


def _from_text(kind: str, raw: str) -> object:
    text = raw.strip()
    try:
        if kind == "int":
            return int(text)
        if kind == "seconds":
            return float(text)
    except ValueError:
        raise _Invalid(f"expected {_KIND_EXPECTS[kind]}, got {raw!r}") from None
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise _Invalid(f"expected {_KIND_EXPECTS[kind]}, got {raw!r}")
    if kind == "list":
        return [item.strip() for item in text.split(",")]
    return text


def _typed(kind: str, value: object) -> object:
    """Check the type of a TOML (or typed flag) value; secrets' values are never echoed, only their type."""
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "seconds": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "path": isinstance(value, str | Path),
        "list": isinstance(value, list | tuple) and all(isinstance(v, str) for v in value),
    }[kind]
    if not ok:
        raise _Invalid(f"expected {_KIND_EXPECTS[kind]}, got {type(value).__name__} {value!r}")
    if kind == "seconds":
        return float(value)  # type: ignore[arg-type]  # checked just above
    if kind == "list":
        return list(value)  # type: ignore[call-overload]  # checked just above
    return value


def _at_least(minimum: int, maximum: int | None = None) -> Callable[[int], int]:
    def check(value: int) -> int:
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise _Invalid(f"must be an integer {bound}, got {value}")
        return value

    return check


def _seconds(*, allow_zero: bool) -> Callable[[float], float]:
    def check(value: float) -> float:
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise _Invalid(f"must be a number of seconds {'>= 0' if allow_zero else '> 0'}, got {value}")
        return value

    return check


def _non_empty(value: str) -> str:
    if not value:
        raise _Invalid("must not be empty (leave the setting out to unset it)")
    return value


def _host(value: str) -> str:
    if not value or any(ch.isspace() for ch in value):
        raise _Invalid(f"expected a host name or IP address, got {value!r}")
    return value


def _path(value: str | Path) -> Path:
    if not str(value):
        raise _Invalid("expected a path, got ''")
    return Path(value).expanduser()


def _choice(options: tuple[str, ...], *, upper: bool) -> Callable[[str], str]:
    def check(value: str) -> str:
        normal = value.strip().upper() if upper else value.strip().lower()
        if normal not in options:
            raise _Invalid(f"expected one of {', '.join(options)}, got {value!r}")
        return normal

    return check


def _url(value: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  # raises ValueError on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid(f"expected an http:// or https:// URL, got {value!r}")
    return value


def _image_size(value: str) -> str:
    match = re.fullmatch(r"\s*([0-9]+)\s*\*\s*([0-9]+)\s*", value)
    if match is None or int(match[1]) == 0 or int(match[2]) == 0:
        raise _Invalid(f"expected WIDTH*HEIGHT with positive integers (e.g. 1024*1024), got {value!r}")
    return f"{int(match[1])}*{int(match[2])}"


def _networks(items: list[str]) -> tuple[IPNetwork, ...]:
    result = []
    for item in items:
        try:
            # strict=False: "10.0.0.1/24" means the network 10.0.0.0/24, as people write it in firewall rules.
            result.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise _Invalid(f"{item!r} is not an IP address or CIDR block") from None
    return tuple(result)


def _keys(items: list[str]) -> tuple[str, ...]:
    # An empty item is refused rather than skipped: "XINFD_API_KEYS=," must not silently mean "no keys".
    if any(not item.strip() for item in items):
        raise _Invalid("empty API key in the list")
    return tuple(item.strip() for item in items)


def _lookup(kind: str, name: str) -> int | None:
    import grp
    import pwd

    try:
        if kind == "user":
            return pwd.getpwnam(name).pw_uid
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _group_name(value: str) -> str:
    # Resolved when the socket is created (a missing group stops the daemon there with one line), not here,
    # so a config file can be checked on a machine without the group.
    value = value.strip()
    if not value or any(ch.isspace() or ch in ":/," for ch in value):
        raise _Invalid(f"expected a group name or numeric gid, got {value!r}")
    return value


def _principals(kind: str) -> Callable[[list[str]], tuple[str, ...]]:
    """Users or groups named by name or numeric id (for SO_PEERCRED checks on the control socket)."""

    def check(items: list[str]) -> tuple[str, ...]:
        result = []
        for item in (i.strip() for i in items):
            if not item or (not item.isdigit() and _lookup(kind, item) is None):
                raise _Invalid(f"no {kind} named {item!r}")
            result.append(item)
        return tuple(result)

    return check


def _launch_item(item: str) -> tuple[str, int]:
    text = item.strip()
    name, colon, count = text.rpartition(":")
    if not colon:
        name, count = text, "1"
    if not re.fullmatch(r"[0-9]+", count) or int(count) < 1:
        raise _Invalid(f"{item!r}: replicas must be an integer >= 1")
    # The name becomes a directory name under XINFERENCE_HOME, so nothing that could escape it.
    if not is_valid_name(name, MODEL_NAME):
        raise _Invalid(f"{item!r}: expected NAME or NAME:REPLICAS with a model name of {MODEL_NAME.rule}")
    return name, int(count)


def _launch_list(items: list[str]) -> tuple[str, ...]:
    result: list[str] = []
    seen: set[str] = set()
    for item in items:
        name, replicas = _launch_item(item)
        if name in seen:
            raise _Invalid(f"model {name!r} is listed twice")
        seen.add(name)
        result.append(f"{name}:{replicas}" if ":" in item else name)
    return tuple(result)


def _same(value: Any) -> Any:
    return value


_SPECS: Final[Mapping[str, _Spec]] = MappingProxyType(
    {
        "home": _Spec("path", _path),
        "host": _Spec("str", _host),
        "port": _Spec("int", _at_least(0, 65535)),  # 0: an ephemeral port (tests)
        "control_socket": _Spec("path", _path),
        "log_level": _Spec("str", _choice(LOG_LEVELS, upper=True)),
        "endpoint": _Spec("str", _url),
        "model_src": _Spec("str", _choice(MODEL_SOURCES, upper=False)),
        "health_check_failure_threshold": _Spec("int", _at_least(1)),
        "health_check_interval": _Spec("seconds", _seconds(allow_zero=False)),
        "health_check_timeout": _Spec("seconds", _seconds(allow_zero=False)),
        "disable_health_check": _Spec("bool", _same),
        "disable_metrics": _Spec("bool", _same),
        "download_max_attempts": _Spec("int", _at_least(1)),
        "text_to_image_batching_size": _Spec("str", _image_size),
        "sse_ping_attempts_seconds": _Spec("seconds", _seconds(allow_zero=False)),
        "max_tokens": _Spec("int", _at_least(1)),
        "allowed_ips": _Spec("list", _networks),
        "trusted_proxies": _Spec("list", _networks),
        "api_keys": _Spec("list", _keys),
        "metrics_api_keys": _Spec("list", _keys),
        "control_socket_group": _Spec("str", _group_name),
        "control_allowed_users": _Spec("list", _principals("user")),
        "control_allowed_groups": _Spec("list", _principals("group")),
        "drain_timeout": _Spec("seconds", _seconds(allow_zero=True)),
        "stream_write_timeout": _Spec("seconds", _seconds(allow_zero=False)),
        "log_max_bytes": _Spec("int", _at_least(4096)),
        "log_backups": _Spec("int", _at_least(1, 100)),
        "batch_size": _Spec("int", _at_least(1)),
        "batch_interval": _Spec("seconds", _seconds(allow_zero=True)),
        "allow_multi_replica_per_gpu": _Spec("bool", _same),
        "launch_strategy": _Spec("str", _choice(LAUNCH_STRATEGIES, upper=True)),
        "enable_virtual_env": _Spec("bool", _same),
        "virtual_env_skip_installed": _Spec("bool", _same),
        "virtual_env_build_timeout": _Spec("seconds", _seconds(allow_zero=False)),
        "wheel_cache": _Spec("path", _path),
        "csg_token": _Spec("str", _non_empty),
        "csg_endpoint": _Spec("str", _url),
        "stop_grace_period": _Spec("seconds", _seconds(allow_zero=False)),
        "launch_timeout": _Spec("seconds", _seconds(allow_zero=False)),
        "replica_max_concurrency": _Spec("int", _at_least(1)),
        "model_queue_size": _Spec("int", _at_least(0)),
        "restart_backoff": _Spec("seconds", _seconds(allow_zero=False)),
        "restart_budget": _Spec("int", _at_least(0)),
        "launch": _Spec("list", _launch_list),
    }
)
# Keys a config file may hold: every field but ``sources``; ``gpus`` is file-only ([[gpus]] tables).
TOML_KEYS: Final = frozenset(_SPECS) | {"gpus"}


def _parse(name: str, value: object, *, text: bool, where: str, base: Path | None) -> Any:
    """Parse one value for field ``name``; ``base`` anchors relative paths (the config file's directory)."""
    spec = _SPECS[name]
    try:
        typed = _from_text(spec.kind, value) if text else _typed(spec.kind, value)  # type: ignore[arg-type]
        result = spec.check(typed)
    except _Invalid as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if isinstance(result, Path) and not result.is_absolute():
        # Absolute now, so a later chdir (daemons run from /) cannot change what the setting means.
        result = (base / result) if base is not None else result.absolute()
    return result


_GPU_KEYS: Final = ("index", "name", "memory_mb")


def _gpus(value: object, where: str) -> tuple[GpuInfo, ...]:
    if not isinstance(value, list) or not all(isinstance(table, dict) for table in value):
        raise ConfigError(f"{where}: expected [[gpus]] tables, got {type(value).__name__}")
    gpus: list[GpuInfo] = []
    for n, table in enumerate(value):
        here = f"{where}[{n}]"
        for key in table:
            if key not in _GPU_KEYS:
                raise ConfigError(f"{here}: unknown key {key!r}{_suggest(key, _GPU_KEYS)}")
        for key in _GPU_KEYS:
            if key not in table:
                raise ConfigError(f"{here}: missing key {key!r}")
        index, name, memory = table["index"], table["name"], table["memory_mb"]
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ConfigError(f"{here}.index: must be an integer >= 0, got {index!r}")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{here}.name: must be a non-empty string, got {name!r}")
        if not isinstance(memory, int) or isinstance(memory, bool) or memory <= 0:
            raise ConfigError(f"{here}.memory_mb: must be an integer > 0, got {memory!r}")
        if any(gpu.index == index for gpu in gpus):
            raise ConfigError(f"{here}.index: duplicate GPU index {index}")
        gpus.append(GpuInfo(index=index, name=name, memory_mb=memory))
    return tuple(gpus)


def _suggest(word: str, candidates: Any) -> str:
    close = difflib.get_close_matches(word, sorted(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in TOML_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r}{_suggest(key, TOML_KEYS)}")
        if key == "gpus":
            values[key] = _gpus(value, f"{path}: gpus")
        else:
            values[key] = _parse(key, value, text=False, where=f"{path}: {key}", base=path.parent)
    return values


def _config_file(config_path: str | Path | None, env: Mapping[str, str]) -> Path | None:
    if config_path is None and env.get(CONFIG_ENV_VAR, "").strip():
        config_path = env[CONFIG_ENV_VAR].strip()
    if config_path is None:
        return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None
    path = Path(config_path).expanduser()
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    return path


def _default_home(env: Mapping[str, str]) -> Path:
    if env.get("HOME"):
        return Path(env["HOME"]) / ".xinference"
    try:
        return Path.home() / ".xinference"
    except RuntimeError:
        raise ConfigError(
            "XINFERENCE_HOME: not set, and the current user has no home directory to default to"
        ) from None


def load_settings(
    *,
    config_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    cli: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the effective settings: defaults < config file < environment < ``cli``.

    ``config_path`` None means ``$XINFD_CONFIG`` if set, else ``/etc/xinfd/xinfd.toml`` if it exists; a file
    named explicitly (either way) must exist. ``env`` defaults to ``os.environ``; an empty variable counts as
    unset. ``cli`` keys are field names, values None mean "flag not given"; a string value is parsed like an
    environment variable, anything else like a TOML value (so ``launch`` takes a list, which replaces, not
    extends, the lower layers). Raises ``ConfigError`` with one line naming the file and key, the variable or
    the flag at fault.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    path = _config_file(config_path, env)
    if path is not None:
        for name, value in _read_file(path).items():
            values[name], sources[name] = value, f"file {path}"
    for var, name in ENV_VARS.items():
        raw = env.get(var)
        if raw is None or not raw.strip():
            continue
        values[name] = _parse(name, raw, text=True, where=var, base=None)
        sources[name] = f"env {var}"
    for name, value in (cli or {}).items():
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if name not in _SPECS:
            raise ConfigError(f"{flag}: not a setting that can be given on the command line")
        values[name] = _parse(name, value, text=isinstance(value, str), where=flag, base=None)
        sources[name] = f"flag {flag}"
    if "home" not in values:
        values["home"] = _default_home(env)
    if "control_socket" not in values:
        values["control_socket"] = values["home"] / "xinfd.sock"
    if "wheel_cache" not in values:
        values["wheel_cache"] = values["home"] / "cache" / "wheels"
    for f in fields(Settings):
        if f.name != "sources":
            sources.setdefault(f.name, "default")
    return Settings(**values, sources=MappingProxyType(sources))


def parse_launch_item(item: str) -> tuple[str, int]:
    """Split a launch item ``"NAME"`` or ``"NAME:REPLICAS"`` into (name, replicas); replicas default to 1."""
    try:
        return _launch_item(item)
    except _Invalid as exc:
        raise ConfigError(f"launch: {exc}") from None


# ------------------------------------------------------------------------------------------------------------
# describe()


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


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return _toml_str(str(value))  # str, Path, IPv4Network, IPv6Network


def _comment(source: str) -> str:
    # A control character (a newline in a file name) would end the comment and break the TOML.
    return "# from: " + "".join(ch if ch.isprintable() else "?" for ch in source)


def describe(settings: Settings) -> str:
    """The effective settings as TOML, each value followed by a comment saying where it came from.

    The output parses with ``tomllib`` and loads back with ``load_settings(config_path=...)`` to the same
    values, except secrets: ``api_keys`` and ``csg_token`` are printed as ``"***"`` (one per API key), so a
    reloaded copy holds the mask, not the secret. Unset optional values are printed as comments.
    """
    lines = ['# Effective xinfd configuration (secrets masked as "***": do not reuse them as is).']
    for f in fields(Settings):
        if f.name in ("sources", "gpus"):
            continue
        value = getattr(settings, f.name)
        comment = _comment(settings.sources.get(f.name, "default"))
        if value is None:
            lines.append(f"# {f.name} is unset  {comment}")
            continue
        if f.name in SECRET_FIELDS:
            value = tuple(MASK for _ in value) if isinstance(value, tuple) else MASK
        lines.append(f"{f.name} = {_toml_value(value)}  {comment}")
    gpus_comment = _comment(settings.sources.get("gpus", "default"))
    if not settings.gpus:
        lines.append(f"# no [[gpus]] declared  {gpus_comment}")
    for gpu in settings.gpus:
        lines += ["", f"[[gpus]]  {gpus_comment}", f"index = {gpu.index}"]
        lines += [f"name = {_toml_str(gpu.name)}", f"memory_mb = {gpu.memory_mb}"]
    return "\n".join(lines) + "\n"
