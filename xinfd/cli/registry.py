"""xinfctl commands of the model registry: register --file, unregister NAME, registrations."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from xinfd.cli.client import EXIT_USAGE, CliError, ControlClient
from xinfd.cli.output import families_table, print_json


def cmd_register(client: ControlClient, args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        spec = json.loads(path.read_text())
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", EXIT_USAGE) from None
    except json.JSONDecodeError as exc:
        raise CliError(f"{path} is not valid JSON: {exc}", EXIT_USAGE) from None
    data = client.call("POST", "/v1/registrations", spec)
    if args.json:
        print_json(data)
    else:
        print(f"registered {data['model_name']}")
    return 0


def cmd_unregister(client: ControlClient, args: argparse.Namespace) -> int:
    data = client.call("DELETE", f"/v1/registrations/{args.model_name}")
    if args.json:
        print_json(data)
    else:
        print(f"unregistered {data['unregistered']}")
    return 0


def cmd_registrations(client: ControlClient, args: argparse.Namespace) -> int:
    rows = client.call("GET", "/v1/registrations")
    if args.json:
        print_json(rows)
        return 0
    print(families_table(rows))
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this module's subcommands to the xinfctl parser."""
    reg = sub.add_parser("register", parents=[common], help="register a custom model family from a JSON spec")
    reg.add_argument("--file", "-f", required=True, help="the model spec (JSON)")
    reg.set_defaults(func=cmd_register)
    unreg = sub.add_parser("unregister", parents=[common], help="remove a custom model family")
    unreg.add_argument("model_name")
    unreg.set_defaults(func=cmd_unregister)
    sub.add_parser("registrations", parents=[common], help="custom model families").set_defaults(
        func=cmd_registrations
    )
