"""Which control API xinfctl talks to: the socket by default, a remote front end with --endpoint or
XINFERENCE_ENDPOINT (with the admin key from --api-key-file or XINFD_ADMIN_API_KEY)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xinfd.api.control import CONTROL_PREFIX
from xinfd.cli import build_parser, make_client
from xinfd.cli.client import CONTROL_PREFIX as CLI_CONTROL_PREFIX
from xinfd.cli.client import CliError, ControlClient, RemoteControlClient, _decode


def client_for(argv: list[str], env: dict[str, str]) -> ControlClient:
    args, _ = build_parser().parse_known_args(argv)
    for name in ("socket", "endpoint", "api_key_file"):
        setattr(args, name, getattr(args, name, None))
    return make_client(args, env)


def test_the_cli_knows_the_daemons_control_mount() -> None:
    assert CLI_CONTROL_PREFIX == CONTROL_PREFIX


def test_socket_by_default_and_remote_with_an_endpoint(tmp_path: Path) -> None:
    home = {"XINFERENCE_HOME": str(tmp_path)}
    local = client_for(["list"], home)
    assert type(local) is ControlClient and local.socket_path == tmp_path / "xinfd.sock"
    remote = client_for(["--endpoint", "http://10.0.0.5:9997/", "list"], {**home, "XINFD_ADMIN_API_KEY": "k"})
    assert isinstance(remote, RemoteControlClient) and remote.endpoint == "http://10.0.0.5:9997"
    assert remote._path("/v1/models") == "/control/v1/models" and remote._headers() == {"Authorization": "Bearer k"}
    from_env = client_for(["list"], {**home, "XINFERENCE_ENDPOINT": "https://h:1"})
    assert isinstance(from_env, RemoteControlClient) and from_env._headers() == {}
    # An explicit --socket wins over the variable (which `xinfctl chat` also reads).
    assert type(client_for(["--socket", "/s", "list"], {"XINFERENCE_ENDPOINT": "http://h:1"})) is ControlClient
    key = tmp_path / "key"
    key.write_text("sk-file\n")
    filed = client_for(["--endpoint", "http://h:1", "--api-key-file", str(key), "list"], {})
    assert filed._headers() == {"Authorization": "Bearer sk-file"}


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--endpoint", "ftp://h", "list"], "--endpoint"),
        (["--endpoint", "http://h:1", "--socket", "/s", "list"], "not both"),
        (["--api-key-file", "/nonexistent", "--endpoint", "http://h:1", "list"], "cannot read"),
        (["--api-key-file", "/nonexistent", "list"], "for --endpoint"),
    ],
)
def test_bad_remote_options_are_usage_errors(argv: list[str], words: str) -> None:
    with pytest.raises(CliError) as info:
        client_for(argv, {})
    assert info.value.code == 2 and words in str(info.value)


def test_refusals_are_unauthorized_exit_1() -> None:
    for status in (401, 403):
        with pytest.raises(CliError) as info:
            _decode(status, b'{"error": {"message": "no API key was given"}}')
        assert info.value.code == 1 and str(info.value) == "unauthorized: no API key was given"
