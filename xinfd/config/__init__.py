"""Settings of the xinfd daemon, each declared once (``xinfd.config.declarations``).

The package's public surface: ``Settings`` and ``load_settings`` (defaults < TOML < environment < flags),
the tables derived from the declarations, and the renderings (``describe``, ``reference_toml``,
``settings_table``).
"""

from __future__ import annotations

from pathlib import Path

from xinfd.config.declarations import (
    DECLARATIONS,
    ENV_VARS,
    LAUNCH_STRATEGIES,
    LOG_LEVELS,
    MODEL_SOURCES,
    OTHER_VARIABLES,
    RELOADABLE,
    SECRET_FIELDS,
    TOML_KEYS,
    Declaration,
    Settings,
)
from xinfd.errors import ConfigError

# Read only if it exists; a package attribute (not a default argument) so tests can point it elsewhere.
DEFAULT_CONFIG_PATH: Path = Path("/etc/xinfd/xinfd.toml")

from xinfd.config.loading import CONFIG_ENV_VAR, load_settings, parse_launch_item  # noqa: E402  # needs the above
from xinfd.config.rendering import MASK, describe, reference_toml, settings_table  # noqa: E402

__all__ = [
    "CONFIG_ENV_VAR",
    "DECLARATIONS",
    "DEFAULT_CONFIG_PATH",
    "ENV_VARS",
    "LAUNCH_STRATEGIES",
    "LOG_LEVELS",
    "MASK",
    "MODEL_SOURCES",
    "OTHER_VARIABLES",
    "RELOADABLE",
    "SECRET_FIELDS",
    "TOML_KEYS",
    "ConfigError",
    "Declaration",
    "Settings",
    "describe",
    "load_settings",
    "parse_launch_item",
    "reference_toml",
    "settings_table",
]
