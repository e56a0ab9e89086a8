"""``xinfctl chat`` finds the front end the way the daemon configures it, without importing the daemon's config."""

from __future__ import annotations

from pathlib import Path

import pytest

from xinfd import config
from xinfd.cli import chat
from xinfd.cli.client import EXIT_USAGE, CliError


def test_the_cli_names_match_the_daemons() -> None:
    assert chat.CONFIG_ENV_VAR == config.CONFIG_ENV_VAR
    assert chat.DEFAULT_CONFIG_PATH == config.DEFAULT_CONFIG_PATH


@pytest.mark.parametrize(
    ("env_value", "toml"),
    [
        (None, None),  # nothing set: the daemon's default
        ("http://10.1.2.3:8000/", None),  # the variable, trailing slash dropped
        (None, 'endpoint = "https://front.example:9443"\n'),  # the config file's key
        ("http://127.0.0.1:1234", 'endpoint = "https://front.example:9443"\n'),  # the variable wins
        (None, 'log_level = "INFO"\n'),  # a config file without the key: the default
    ],
)
def test_the_cli_resolves_the_endpoint_as_the_daemon_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env_value: str | None, toml: str | None
) -> None:
    absent = tmp_path / "absent.toml"
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", absent)
    env = {"HOME": str(tmp_path)}
    if env_value is not None:
        env["XINFERENCE_ENDPOINT"] = env_value
    if toml is not None:
        path = tmp_path / "xinfd.toml"
        path.write_text(toml)
        env["XINFD_CONFIG"] = str(path)
    daemon_says = config.load_settings(env=env).endpoint.rstrip("/")
    assert chat.front_end_url(env, default_config=absent) == daemon_says


@pytest.mark.parametrize(
    ("env", "where"),
    [
        ({"XINFERENCE_ENDPOINT": "ftp://x"}, "XINFERENCE_ENDPOINT"),
        ({"XINFD_CONFIG": "/nonexistent/xinfd.toml"}, "/nonexistent/xinfd.toml"),
    ],
)
def test_a_bad_endpoint_is_a_usage_error_naming_its_source(env: dict[str, str], where: str) -> None:
    with pytest.raises(CliError, match=where) as info:
        chat.front_end_url(env)
    assert info.value.code == EXIT_USAGE
