"""xinfctl: the operator's CLI. Formatting only; every decision is the daemon's (control API on its Unix socket).

Human tables by default, ``--json`` for scripts. Exit codes: 0 ok, 1 the daemon refused or failed (or is not
running), 2 usage or validation error (one line naming the problem). Each command group lives in its own
module with a ``register(sub, common)`` function, listed in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from xinfd.cli import chat, gpus, logs, models, registry, venvs
from xinfd.cli.client import EXIT_USAGE, CliError, ControlClient, default_socket

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
    try:
        if extra and not getattr(args, "accepts_extra", False):
            raise CliError(f"unrecognized arguments: {' '.join(extra)}", EXIT_USAGE)
        args.extra = extra
        client = ControlClient(args.socket or default_socket())
        return int(args.func(client, args))
    except CliError as exc:
        print(f"xinfctl: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("xinfctl: interrupted (a launch in progress continues in the daemon)", file=sys.stderr)
        return 130
