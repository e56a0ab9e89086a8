"""xinfctl venv list [--verify]/create/remove/gc: model virtual environments (formatting only)."""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse
from typing import Any

from xinfd.cli.client import CliError, ControlClient, exit_code_for_event
from xinfd.cli.output import print_json, table


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}GiB"


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def cmd_list(client: ControlClient, args: argparse.Namespace) -> int:
    """The venv table; with ``--verify``, each damaged file under its venv and exit code 1 if there is one."""
    params = {k: v for k, v in (("model", args.model), ("verify", "1" if args.verify else None)) if v}
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    rows = client.call("GET", f"/v1/venvs{query}", timeout=600.0 if args.verify else None)
    damaged = [r for r in rows if r.get("damaged")]
    if args.json:
        print_json(rows)
        return 1 if damaged else 0
    print(table([(r["model_name"], r["model_engine"], r["python_version"], r["digest"] or "invalid",
                  "*" if r["current"] else "", _size(r["size_bytes"]), r["packages"],
                  ",".join(r["in_use_by"]) or "-", _when(r["created"]), _when(r["last_used"])) for r in rows],
                ("MODEL", "ENGINE", "PYTHON", "DIGEST", "CURRENT", "SIZE", "PACKAGES", "IN USE BY", "CREATED",
                 "LAST USED")))
    for row in damaged:
        print(f"\n{row['path']}: {len(row['damaged'])} damaged file(s)")
        for problem in row["damaged"]:
            print(f"  {problem}")
    if args.verify and not damaged:
        print(f"\nverified {len(rows)} venv(s): every installed file matches its RECORD", file=sys.stderr)
    return 1 if damaged else 0


def cmd_create(client: ControlClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"model_name": args.model_name,
                            "virtual_env_packages": args.virtual_env_package or []}
    if args.model_engine:
        body["model_engine"] = args.model_engine
    if args.python:
        body["python"] = args.python
    started = time.monotonic()
    final: dict[str, Any] | None = None
    for event in client.stream("POST", "/v1/venvs", body):
        if not args.json:
            elapsed = time.monotonic() - started
            print(f"[{elapsed:6.1f}s] {event.get('message', event['event'])}", file=sys.stderr)
        if event["event"] in ("ready", "error"):
            final = event
    if final is None:
        raise CliError("the daemon closed the connection before the venv was built")
    if final["event"] == "error":
        raise CliError(f"venv build failed: {final['message']}", exit_code_for_event(final))
    if args.json:
        print_json(final["venv"])
    else:
        print(final["venv"]["path"])
    return 0


def cmd_remove(client: ControlClient, args: argparse.Namespace) -> int:
    query = {k: v for k, v in (("engine", args.engine), ("python", args.python)) if v}
    path = f"/v1/venvs/{urllib.parse.quote(args.model_name, safe='')}"
    data = client.call("DELETE", path + (f"?{urllib.parse.urlencode(query)}" if query else ""), timeout=None)
    if args.json:
        print_json(data)
    else:
        for removed in data["removed"]:
            print(f"removed {removed}")
        if not data["removed"]:
            print("nothing to remove", file=sys.stderr)
    return 0


def cmd_gc(client: ControlClient, args: argparse.Namespace) -> int:
    data = client.call("POST", "/v1/venvs/gc", {}, timeout=None)
    if args.json:
        print_json(data)
    else:
        for removed in data["removed"]:
            print(f"removed {removed}")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``xinfctl venv ...`` to the xinfctl parser."""
    venv = sub.add_parser("venv", parents=[common], help="model virtual environments")
    vsub = venv.add_subparsers(dest="venv_command", required=True, parser_class=type(venv))
    ls = vsub.add_parser("list", parents=[common], help="list model venvs")
    ls.add_argument("--model", help="only this model's venvs")
    ls.add_argument("--verify", action="store_true",
                    help="hash every installed file against its RECORD (slow: reads every file); exit 1 and "
                         "list the damaged files if any")
    ls.set_defaults(func=cmd_list)
    create = vsub.add_parser("create", parents=[common], help="build a model's venv ahead of a launch")
    create.add_argument("-n", "--model-name", required=True)
    create.add_argument("-e", "--model-engine")
    create.add_argument("-vp", "--virtual-env-package", action="append", metavar="SPEC",
                        help="add or replace a package (repeatable)")
    create.add_argument("--python", metavar="VER|PATH",
                        help="Python of the venv: a version on this machine (3.12) or an absolute path")
    create.set_defaults(func=cmd_create)
    remove = vsub.add_parser("remove", parents=[common], help="remove a model's venvs (refused while in use)")
    remove.add_argument("model_name")
    remove.add_argument("--engine", help="only this engine's venvs")
    remove.add_argument("--python", help="only this Python version's venvs (3.12 matches every 3.12.x)")
    remove.set_defaults(func=cmd_remove)
    vsub.add_parser("gc", parents=[common], help="remove unused venvs and build leftovers").set_defaults(
        func=cmd_gc)
