"""xinfctl commands for the daemon and its models: status, engines, families, list, launch, terminate."""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

from xinfd.cli.client import EXIT_USAGE, CliError, ControlClient, exit_code_for_event
from xinfd.cli.output import families_table, print_json, table


def cmd_status(client: ControlClient, args: argparse.Namespace) -> int:
    data = client.call("GET", "/v1/status")
    if args.json:
        print_json(data)
        return 0
    print(f"xinfd {data['version']} (pid {data['pid']}), up {data['uptime_s']:.0f}s")
    print(f"endpoint:       {data['endpoint']}")
    print(f"control socket: {data['control_socket']}")
    print(f"home:           {data['home']}")
    print(f"models:         {data['models']} ({data['replicas']} replicas)")
    print(f"engines:        {', '.join(data['engines']) or 'none'}")
    for failure in data["plugin_failures"]:
        print(f"plugin failed:  {failure['name']}: {failure['error']}")
    for server in data.get("fork_servers", []):  # absent from daemons before fork servers
        kept = "kept" if server["pinned"] else "closes when idle"
        print(f"fork server:    pid {server['pid']}, {server['replicas']} replica(s), {kept}, "
              f"imported {', '.join(server['modules'])} in {server['import_seconds']:.2f}s")
    return 0


def cmd_engines(client: ControlClient, args: argparse.Namespace) -> int:
    path = "/v1/engines"
    if args.model_name:
        path += "?" + urllib.parse.urlencode({"model": args.model_name, **(
            {} if args.virtual_env is None else {"venv": str(args.virtual_env).lower()})})
    rows = client.call("GET", path)
    if args.json:
        print_json(rows)
        return 0
    print(
        table(
            [(r["name"], "yes" if r["available"] else "no", r["reason"]) for r in rows],
            ("ENGINE", "AVAILABLE", "REASON"),
        )
    )
    # Where the GPU inventory the reasons were judged against came from, or why NVML found none.
    print(f"GPUs: {client.call('GET', '/v1/gpus')['inventory']['summary']}")
    return 0


def cmd_families(client: ControlClient, args: argparse.Namespace) -> int:
    rows = client.call("GET", "/v1/families")
    if args.json:
        print_json(rows)
        return 0
    print(families_table(rows))
    return 0


def libraries_cell(libraries: dict[str, str]) -> str:
    """The replica's imported library versions, ``transformers=4.37.2 torch=2.13.0`` (what its venv really runs)."""
    return " ".join(f"{name}={version}" for name, version in sorted(libraries.items()))


def cmd_list(client: ControlClient, args: argparse.Namespace) -> int:
    models = client.call("GET", "/v1/models")
    if args.json:
        print_json(models)
        return 0
    rows = []
    for m in models:
        for r in m["replicas"] or [{}]:
            note = r.get("failure") or r.get("last_exit") or ""
            rows.append(
                (
                    m["model_uid"],
                    m["model_name"],
                    m["model_engine"],
                    m["state"],
                    r.get("label"),
                    r.get("state"),
                    r.get("pid"),
                    r.get("restarts"),
                    libraries_cell(r.get("libraries") or {}),
                    note,
                )
            )
    print(
        table(
            rows, ("UID", "MODEL", "ENGINE", "STATE", "REPLICA", "REPLICA STATE", "PID", "RESTARTS", "LIBRARIES",
                   "NOTE")
        )
    )
    return 0


def _parse_options(extra: Sequence[str]) -> dict[str, Any]:
    """Unknown ``--key value`` pairs become launch options for the engine (as ``xinference launch`` does)."""
    options: dict[str, Any] = {}
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or len(token) < 3:
            raise CliError(f"unexpected argument {token!r}", EXIT_USAGE)
        key = token[2:].replace("-", "_")
        if "=" in key:
            key, value = key.split("=", 1)
            options[key] = value
            i += 1
        elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            options[key] = extra[i + 1]
            i += 2
        else:
            options[key] = True
            i += 1
    return options


def cmd_launch(client: ControlClient, args: argparse.Namespace) -> int:
    if args.replica < 1:
        raise CliError(f"--replica must be at least 1, got {args.replica}", EXIT_USAGE)
    body: dict[str, Any] = {
        "model_name": args.model_name,
        "replica": args.replica,
        "env": dict(args.env or []),
        "options": _parse_options(args.extra),
    }
    # Well-known engine options with their own flags; they travel as launch options.
    if args.model_path is not None:
        body["options"]["model_path"] = args.model_path
    if args.enable_thinking is not None:
        body["options"]["enable_thinking"] = args.enable_thinking
    if args.model_engine:
        body["model_engine"] = args.model_engine
    # Checked by the daemon against the family's weights (a 400 listing what it has).
    for field, value in (("model_size_in_billions", args.size_in_billions), ("model_format", args.model_format),
                         ("quantization", args.quantization)):
        if value is not None:
            body[field] = value
    if args.model_uid:
        body["model_uid"] = args.model_uid
    body.update(_gpu_flags(args))
    if args.cpu_threads is not None:
        if args.cpu_threads < 1:
            raise CliError(f"--cpu-threads must be at least 1, got {args.cpu_threads}", EXIT_USAGE)
        body["cpu_threads"] = args.cpu_threads
    # None follows XINFERENCE_ENABLE_VIRTUAL_ENV; -vp entries are validated by the daemon.
    if args.virtual_env is not None:
        body["enable_virtual_env"] = args.virtual_env
    if args.virtual_env_package:
        body["virtual_env_packages"] = args.virtual_env_package
    if args.python:
        body["python"] = args.python
    started = time.monotonic()
    final: dict[str, Any] | None = None
    for event in client.stream("POST", "/v1/models", body):
        if not args.json:
            print(
                f"[{time.monotonic() - started:6.1f}s] {event.get('message', event['event'])}",
                file=sys.stderr,
            )
        if event["event"] in ("ready", "error"):
            final = event
    if final is None:
        raise CliError("the daemon closed the connection before the launch finished")
    if final["event"] == "error":
        if args.json:
            print_json(final)
        raise CliError(f"launch failed: {final['message']}", exit_code_for_event(final))
    if args.json:
        print_json(final["model"])
    else:
        print(final["model"]["model_uid"])
    return 0


def _gpu_flags(args: argparse.Namespace) -> dict[str, Any]:
    """``--n-gpu N|auto|0`` and ``--gpu-idx 0,1`` as launch-request fields; bad values exit 2."""
    fields: dict[str, Any] = {}
    if args.n_gpu is not None:
        if args.n_gpu != "auto" and not args.n_gpu.isdigit():
            raise CliError(f"--n-gpu must be auto or an integer >= 0, got {args.n_gpu!r}", EXIT_USAGE)
        fields["n_gpu"] = "auto" if args.n_gpu == "auto" else int(args.n_gpu)
    if args.gpu_idx is not None:
        parts = [p.strip() for p in args.gpu_idx.split(",")]
        if not parts or not all(p.isdigit() for p in parts):
            raise CliError(
                f"--gpu-idx must be GPU indices separated by commas (e.g. 0,1), got {args.gpu_idx!r}",
                EXIT_USAGE,
            )
        fields["gpu_idx"] = [int(p) for p in parts]
    return fields


def cmd_terminate(client: ControlClient, args: argparse.Namespace) -> int:
    data = client.call("DELETE", f"/v1/models/{args.model_uid}", timeout=None)
    if args.json:
        print_json(data)
    else:
        print(f"terminated {data['terminated']}")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this module's subcommands to the xinfctl parser."""
    sub.add_parser("status", parents=[common], help="daemon status").set_defaults(func=cmd_status)
    engines = sub.add_parser("engines", parents=[common], help="engines and their availability")
    engines.add_argument("-n", "--model-name", help="only this family's engines, judged for it (venv markers)")
    engines_venv = engines.add_mutually_exclusive_group()
    engines_venv.add_argument("--enable-virtual-env", dest="virtual_env", action="store_true", default=None,
                              help="judge as a launch with --enable-virtual-env would be")
    engines_venv.add_argument("--disable-virtual-env", dest="virtual_env", action="store_false")
    engines.set_defaults(func=cmd_engines)
    sub.add_parser("families", parents=[common], help="model families that can be launched").set_defaults(
        func=cmd_families
    )
    sub.add_parser("list", parents=[common], help="running models and replicas").set_defaults(func=cmd_list)
    launch = sub.add_parser(
        "launch",
        parents=[common],
        help="launch a model (unknown --key value pairs are passed to the engine as options)",
    )
    launch.add_argument("-n", "--model-name", required=True)
    launch.add_argument("-e", "--model-engine")
    launch.add_argument("-r", "--replica", type=int, default=1)
    launch.add_argument("-u", "--model-uid")
    launch.add_argument("-s", "--size-in-billions", dest="size_in_billions", metavar="SIZE",
                        help="which of the family's sizes (7, 0.5 or 1_8); the daemon lists the ones it has")
    launch.add_argument("-f", "--model-format", dest="model_format", help="which of the family's formats")
    launch.add_argument("-q", "--quantization", help="which of the family's quantizations")
    launch.add_argument("--model-path", help="load the weights from this local folder or file (e.g. a .gguf)")
    launch.add_argument(
        "--enable-thinking",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default of the template's enable_thinking (requests may override it)",
    )
    launch.add_argument(
        "--n-gpu", metavar="N|auto", help="GPUs per replica (default auto: one each if any; 0: CPU)"
    )
    launch.add_argument("--gpu-idx", metavar="I[,J...]", help="place every replica on exactly these GPUs")
    launch.add_argument(
        "--cpu-threads", type=int, metavar="N",
        help="threads of each CPU replica (default: the daemon splits its cores between CPU replicas)",
    )
    toggle = launch.add_mutually_exclusive_group()
    toggle.add_argument(
        "--enable-virtual-env",
        dest="virtual_env",
        action="store_const",
        const=True,
        help="run this model in its own venv (overrides XINFERENCE_ENABLE_VIRTUAL_ENV)",
    )
    toggle.add_argument(
        "--disable-virtual-env",
        dest="virtual_env",
        action="store_const",
        const=False,
        help="run this model in xinfd's environment",
    )
    launch.add_argument(
        "-vp",
        "--virtual-env-package",
        action="append",
        metavar="SPEC",
        help="add a venv package, or replace the model's entry of the same name (repeatable)",
    )
    launch.add_argument(
        "--python",
        metavar="VER|PATH",
        help="the model venv's Python: a version present on this machine (3.12, 3.12.1) "
        "or an absolute interpreter path (default: xinfd's own)",
    )
    launch.add_argument(
        "--env",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="environment variable for this model's replicas (repeatable)",
    )
    launch.set_defaults(func=cmd_launch, accepts_extra=True)
    terminate = sub.add_parser("terminate", parents=[common], help="stop a model and all its replicas")
    terminate.add_argument("model_uid")
    terminate.set_defaults(func=cmd_terminate)
