"""``xinfctl logs UID [--replica N] [--lines N] [--follow]``: a replica's log, read through the control API;
``xinfctl config``: the running daemon's effective settings (what a SIGHUP reload changed), secrets masked.

The daemon owns the files (``$XINFERENCE_HOME/logs``, rotated); reading them through the control socket means
the operator needs no access to the daemon's home, only to its socket — the same permission as every other
command. ``--follow`` keeps printing new lines until Ctrl-C, across log rotations.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import quote, urlencode

from xinfd.cli.client import CliError, ControlClient


def cmd_logs(client: ControlClient, args: argparse.Namespace) -> int:
    if args.lines < 0:
        raise CliError("--lines must be >= 0", 2)
    query = urlencode({"replica": args.replica, "lines": args.lines, "follow": int(args.follow)})
    response = client.open_raw("GET", f"/v1/models/{quote(args.model_uid, safe='')}/logs?{query}")
    out = sys.stdout.buffer
    try:
        while chunk := response.read1(65536):
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        return 0
    finally:
        response.close()
    return 0


def cmd_config(client: ControlClient, args: argparse.Namespace) -> int:
    response = client.open_raw("GET", "/v1/config")
    with response:
        sys.stdout.write(response.read().decode())
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    config = sub.add_parser("config", parents=[common], help="the running daemon's effective configuration")
    config.set_defaults(func=cmd_config)
    logs = sub.add_parser("logs", parents=[common], help="show (and follow) a replica's log")
    logs.add_argument("model_uid")
    logs.add_argument("-r", "--replica", type=int, default=0, help="replica index (default 0)")
    logs.add_argument("-n", "--lines", type=int, default=200, help="lines of history to show (default 200)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C")
    logs.set_defaults(func=cmd_logs)
