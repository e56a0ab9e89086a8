"""Building the effective settings: defaults < TOML file < environment variables < command-line flags.

Why this shape: packagers configure the daemon with a file in ``/etc``, containers and systemd units with
environment variables (the ``XINFERENCE_*`` names Xinference users already know, ``XINFD_*`` for what is new
here), and a person at a shell with flags; each layer overrides the one before without editing it. Every value
is validated here, once, before anything starts: a bad setting stops the daemon with one line naming the key
or variable and the problem, instead of failing later inside a replica launch.

Names that are not settings are never ignored in silence: a TOML key or an ``XINFERENCE_*``/``XINFD_*``
variable that matches no declaration becomes a warning naming the closest known one (``Settings.warnings``;
``xinfd --strict`` makes it fatal); when the closest match guards access (``allowed_ips``, API keys, the
control socket's users) the warning says that access is not restricted by it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import xinfd.config as package
from xinfd.config import checks
from xinfd.config.declarations import DECLARATIONS, ENV_VARS, OTHER_VARIABLES, TOML_KEYS, Settings
from xinfd.errors import ConfigError

CONFIG_ENV_VAR = "XINFD_CONFIG"
# Prefixes of the variable namespaces that are ours: a variable under them that is not declared is reported.
NAMESPACES = ("XINFERENCE_", "XINFD_")


def parse_value(name: str, value: object, *, text: bool, where: str, base: Path | None) -> Any:
    """Parse one value of setting ``name``; ``base`` anchors relative paths (the config file's directory)."""
    decl = DECLARATIONS[name]
    try:
        if text:
            assert isinstance(value, str)
            kind_value = decl.parse_text(value) if decl.parse_text else checks.from_text(decl.kind, value)
        else:
            kind_value = checks.typed(decl.kind, value)
        result = decl.check(kind_value)
    except checks.Invalid as exc:
        # In a file, "[1].index: ..." (a table's position) joins its key directly: "x.toml: gpus[1].index: ...".
        message = str(exc)
        raise ConfigError(f"{where}{'' if message.startswith('[') and not text else ': '}{message}") from None
    if isinstance(result, Path) and not result.is_absolute():
        # Absolute now, so a later chdir (daemons run from /) cannot change what the setting means.
        result = (base / result) if base is not None else result.absolute()
    return result


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    import difflib  # only for a misspelled name: not loaded by a daemon whose settings are all known

    close = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.75)
    return close[0] if close else None


@dataclass(frozen=True, slots=True)
class _Unknown:
    """A name in the file or our environment namespaces that no declaration knows."""

    where: str  # "/etc/xinfd/xinfd.toml: key 'alowed_ips'" or "environment variable XINFERENCE_ALLOWED_IP"
    closest: str | None  # the closest setting name (TOML key or variable)
    setting: str | None  # the setting that closest names

    def message(self) -> str:
        hint = f"; did you mean {self.closest}?" if self.closest else ""
        decl = DECLARATIONS.get(self.setting or "")
        if decl is not None and decl.guards_access:
            # The one case where ignoring is dangerous: say what it leaves open.
            hint += f" ({self.setting} is NOT set by it: access is not restricted the way this name suggests)"
        return f"{self.where} is not an xinfd setting, ignored{hint}"


def _unknown_key(path: Path, key: str) -> _Unknown:
    close = suggest(key, TOML_KEYS)
    return _Unknown(f"{path}: key {key!r}", close, close)


def _closest_variable(var: str) -> str | None:
    """The declared variable ``var`` most likely misspells, compared without the namespace prefix (which all
    share, so it would make every name look alike): XINFERENCE_ALLOWED_IP -> XINFERENCE_ALLOWED_IPS, and
    XINFD_ALLOWED_IPS (wrong namespace) -> XINFERENCE_ALLOWED_IPS."""
    bare = {name.split("_", 1)[1]: name for name in ENV_VARS}
    close = suggest(var.split("_", 1)[1], bare)
    return bare[close] if close else None


def _unknown_variables(env: Mapping[str, str]) -> list[_Unknown]:
    known = set(ENV_VARS) | set(OTHER_VARIABLES)
    found = []
    for var in sorted(env):
        if not var.startswith(NAMESPACES) or var in known:
            continue
        close = _closest_variable(var)
        found.append(_Unknown(f"environment variable {var}", close, ENV_VARS.get(close or "")))
    return found


def _read_file(path: Path, unknown: list[_Unknown]) -> dict[str, Any]:
    import tomllib  # only with a config file: a daemon configured by flags and variables never parses TOML

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
            unknown.append(_unknown_key(path, key))
        else:
            values[key] = parse_value(key, value, text=False, where=f"{path}: {key}", base=path.parent)
    return values


def _config_file(config_path: str | Path | None, env: Mapping[str, str]) -> Path | None:
    if config_path is None and env.get(CONFIG_ENV_VAR, "").strip():
        config_path = env[CONFIG_ENV_VAR].strip()
    if config_path is None:
        default: Path = package.DEFAULT_CONFIG_PATH  # a package attribute, so tests can point it elsewhere
        return default if default.is_file() else None
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
    strict: bool = False,
) -> Settings:
    """Build the effective settings: defaults < config file < environment < ``cli``.

    ``config_path`` None means ``$XINFD_CONFIG`` if set, else ``/etc/xinfd/xinfd.toml`` if it exists; a file
    named explicitly (either way) must exist. ``env`` defaults to ``os.environ``; an empty variable counts as
    unset. ``cli`` keys are setting names, values None mean "flag not given"; a string value is parsed like an
    environment variable, anything else like a TOML value (so ``launch`` takes a list, which replaces, not
    extends, the lower layers). Unknown names become ``Settings.warnings`` (``strict``: a ``ConfigError``).
    Raises ``ConfigError`` with one line naming the file and key, the variable or the flag at fault.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    unknown: list[_Unknown] = []
    path = _config_file(config_path, env)
    if path is not None:
        for name, value in _read_file(path, unknown).items():
            values[name], sources[name] = value, f"file {path}"
    unknown += _unknown_variables(env)
    if strict and unknown:
        raise ConfigError(unknown[0].message().replace(", ignored", "") + " (--strict)")
    for var, name in ENV_VARS.items():
        raw = env.get(var)
        if raw is None or not raw.strip():
            continue
        values[name] = parse_value(name, raw, text=True, where=var, base=None)
        sources[name] = f"env {var}"
    for name, value in (cli or {}).items():
        if value is None:
            continue
        flag = DECLARATIONS[name].flag if name in DECLARATIONS else None
        if flag is None:  # only settings the daemon has a flag for (build_parser) come from the command line
            raise ConfigError(f"--{name.replace('_', '-')}: not a setting that can be given on the command line")
        values[name] = parse_value(name, value, text=isinstance(value, str), where=flag, base=None)
        sources[name] = f"flag {flag}"
    if "home" not in values:
        values["home"] = _default_home(env)
    if "control_socket" not in values:
        values["control_socket"] = values["home"] / "xinfd.sock"
    if "wheel_cache" not in values:
        values["wheel_cache"] = values["home"] / "cache" / "wheels"
    for f in fields(Settings):
        if f.name in DECLARATIONS:
            sources.setdefault(f.name, "default")
    return Settings(
        **values, sources=MappingProxyType(sources), warnings=tuple(item.message() for item in unknown)
    )


def parse_launch_item(item: str) -> tuple[str, int]:
    """Split a launch item ``"NAME"`` or ``"NAME:REPLICAS"`` into (name, replicas); replicas default to 1."""
    try:
        return checks.launch_item(item)
    except checks.Invalid as exc:
        raise ConfigError(f"launch: {exc}") from None
