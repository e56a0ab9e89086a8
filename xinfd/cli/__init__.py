"""xinfctl: the operator's CLI. Formatting only; every decision is the daemon's (its control API).

Where the control API is: the daemon's Unix socket by default (``--socket``, else ``$XINFD_CONTROL_SOCKET``,
else ``$XINFERENCE_HOME/xinfd.sock``); with ``--endpoint URL`` or ``$XINFERENCE_ENDPOINT`` (and no ``--socket``)
a daemon's front end over HTTP, which needs an admin key: ``--api-key-file PATH`` or ``$XINFD_ADMIN_API_KEY``.
Every command runs the same either way, with the same output and exit codes. ``xinfctl chat`` always talks to
the front end (the same ``--endpoint``/``$XINFERENCE_ENDPOINT``, else the config file's endpoint).

Human tables by default, ``--json`` for scripts. Exit codes: 0 ok, 1 the daemon refused or failed (or is not
running), 2 usage or validation error (one line naming the problem). Each command group lives in its own
module with a ``register(sub, common)`` function, listed in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from xinfd.cli import chat, gpus, logs, models, registry, venvs
from xinfd.cli.chat import ENDPOINT_ENV_VAR, check_url
from xinfd.cli.client import EXIT_USAGE, CliError, ControlClient, RemoteControlClient, admin_key, default_socket

COMMAND_MODULES = [models, gpus, venvs, logs, chat, registry]


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error style of the rest of xinfctl."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"xinfctl: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's copy of an option must not reset a value given before the subcommand.
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable JSON output"
    )
    common.add_argument(
        "--socket",
        type=Path,
        default=argparse.SUPPRESS,
        help="control socket (default: $XINFD_CONTROL_SOCKET or $XINFERENCE_HOME/xinfd.sock)",
    )
    common.add_argument(
        "--endpoint",
        default=argparse.SUPPRESS,
        help="manage the daemon at this front-end URL over HTTP instead of the socket (default: "
        "$XINFERENCE_ENDPOINT if set); xinfctl chat sends its request there",
    )
    common.add_argument(
        "--api-key-file",
        type=Path,
        default=argparse.SUPPRESS,
        help="file holding the admin API key for --endpoint (default: $XINFD_ADMIN_API_KEY)",
    )
    parser = _Parser(prog="xinfctl", description="Control a running xinfd daemon.", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in COMMAND_MODULES:
        module.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.json = getattr(args, "json", False)
    args.socket = getattr(args, "socket", None)
    args.endpoint = getattr(args, "endpoint", None)
    args.api_key_file = getattr(args, "api_key_file", None)
    try:
        if extra and not getattr(args, "accepts_extra", False):
            raise CliError(f"unrecognized arguments: {' '.join(extra)}", EXIT_USAGE)
        args.extra = extra
        return int(args.func(make_client(args), args))
    except CliError as exc:
        print(f"xinfctl: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("xinfctl: interrupted (a launch in progress continues in the daemon)", file=sys.stderr)
        return 130


def make_client(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> ControlClient:
    """The socket's client, or the remote one when an endpoint is named (``--socket`` wins over the variable)."""
    if args.socket is not None and args.endpoint is not None:
        raise CliError("give --socket or --endpoint, not both", EXIT_USAGE)
    endpoint = args.endpoint
    if endpoint is None and args.socket is None and env.get(ENDPOINT_ENV_VAR, "").strip():
        endpoint = env[ENDPOINT_ENV_VAR].strip()
    if endpoint is None:
        if args.api_key_file is not None and not getattr(args, "front_end", False):
            raise CliError("--api-key-file is for --endpoint (the socket needs no key)", EXIT_USAGE)
        return ControlClient(args.socket or default_socket(env))
    where = "--endpoint" if args.endpoint is not None else ENDPOINT_ENV_VAR
    return RemoteControlClient(check_url(endpoint, where), admin_key(args.api_key_file, env))
