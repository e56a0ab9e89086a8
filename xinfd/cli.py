"""xinfctl: the operator's CLI. Formatting only; every decision is the daemon's (control API on its Unix socket).

Human tables by default, ``--json`` for scripts. Exit codes: 0 ok, 1 the daemon refused or failed (or is not
running), 2 usage or validation error (one line naming the problem).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

EXIT_FAILURE = 1
EXIT_USAGE = 2


class CliError(Exception):
    """A failure to report as one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("xinfd", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class ControlClient:
    """Minimal HTTP+JSON client for the control socket (stdlib only, so ``xinfctl`` starts fast)."""

    def __init__(self, socket_path: Path, timeout: float | None = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _send(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> http.client.HTTPResponse:
        conn = _UnixConnection(str(self.socket_path), timeout if timeout is not None else self.timeout)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            conn.request(method, path, body=data, headers=headers)
            return conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError):
            raise CliError(f"xinfd is not running (no daemon on control socket {self.socket_path})") from None
        except PermissionError:
            raise CliError(f"permission denied on control socket {self.socket_path}") from None
        except TimeoutError:
            raise CliError(f"xinfd did not answer within {conn.timeout}s on {self.socket_path}") from None

    def call(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        response = self._send(method, path, body, timeout)
        payload = response.read()
        return _decode(response.status, payload)

    def stream(self, method: str, path: str, body: Any = None) -> Iterator[dict[str, Any]]:
        """NDJSON events of a long operation (launch); the socket has no read timeout while it runs."""
        response = self._send(method, path, body, timeout=None)
        if response.status >= 400:
            _decode(response.status, response.read())
        while line := response.readline():
            if line.strip():
                yield json.loads(line)


def _decode(status: int, payload: bytes) -> Any:
    try:
        data = json.loads(payload) if payload else None
    except json.JSONDecodeError:
        raise CliError(f"bad reply from xinfd (HTTP {status}): {payload[:200]!r}") from None
    if status >= 400:
        err = (data or {}).get("error", {}) if isinstance(data, dict) else {}
        message = err.get("message") or f"HTTP {status}"
        # Validation problems are the user's to fix: exit 2 like any usage error.
        raise CliError(message, EXIT_USAGE if 400 <= status < 500 and status != 409 else EXIT_FAILURE)
    return data


def default_socket(env: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    if env.get("XINFD_CONTROL_SOCKET"):
        return Path(env["XINFD_CONTROL_SOCKET"])
    home = Path(env["XINFERENCE_HOME"]) if env.get("XINFERENCE_HOME") else Path.home() / ".xinference"
    return home / "xinfd.sock"


# ---------------------------------------------------------------------------------------------- formatting


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers], *[["-" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


# ---------------------------------------------------------------------------------------------- commands


def cmd_status(client: ControlClient, args: argparse.Namespace) -> int:
    data = client.call("GET", "/v1/status")
    if args.json:
        _print_json(data)
        return 0
    print(f"xinfd {data['version']} (pid {data['pid']}), up {data['uptime_s']:.0f}s")
    print(f"endpoint:       {data['endpoint']}")
    print(f"control socket: {data['control_socket']}")
    print(f"home:           {data['home']}")
    print(f"models:         {data['models']} ({data['replicas']} replicas)")
    print(f"engines:        {', '.join(data['engines']) or 'none'}")
    for failure in data["plugin_failures"]:
        print(f"plugin failed:  {failure['name']}: {failure['error']}")
    return 0


def cmd_engines(client: ControlClient, args: argparse.Namespace) -> int:
    rows = client.call("GET", "/v1/engines")
    if args.json:
        _print_json(rows)
        return 0
    print(table([(r["name"], "yes" if r["available"] else "no", r["reason"]) for r in rows],
                ("ENGINE", "AVAILABLE", "REASON")))
    return 0


def cmd_families(client: ControlClient, args: argparse.Namespace) -> int:
    rows = client.call("GET", "/v1/families")
    if args.json:
        _print_json(rows)
        return 0
    print(table([(r["model_name"], ",".join(r["abilities"]), ",".join(r["engines"]), r["context_length"])
                 for r in rows], ("MODEL", "ABILITIES", "ENGINES", "CONTEXT")))
    return 0


def cmd_list(client: ControlClient, args: argparse.Namespace) -> int:
    models = client.call("GET", "/v1/models")
    if args.json:
        _print_json(models)
        return 0
    rows = []
    for m in models:
        for r in m["replicas"] or [{}]:
            note = r.get("failure") or r.get("last_exit") or ""
            rows.append((m["model_uid"], m["model_name"], m["model_engine"], m["state"], r.get("label"),
                         r.get("state"), r.get("pid"), r.get("restarts"), note))
    print(table(rows, ("UID", "MODEL", "ENGINE", "STATE", "REPLICA", "REPLICA STATE", "PID", "RESTARTS", "NOTE")))
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
    body: dict[str, Any] = {"model_name": args.model_name, "replica": args.replica,
                            "env": dict(args.env or []), "options": _parse_options(args.extra)}
    if args.model_engine:
        body["model_engine"] = args.model_engine
    if args.model_uid:
        body["model_uid"] = args.model_uid
    started = time.monotonic()
    final: dict[str, Any] | None = None
    for event in client.stream("POST", "/v1/models", body):
        if not args.json:
            print(f"[{time.monotonic() - started:6.1f}s] {event.get('message', event['event'])}", file=sys.stderr)
        if event["event"] in ("ready", "error"):
            final = event
    if final is None:
        raise CliError("the daemon closed the connection before the launch finished")
    if final["event"] == "error":
        if args.json:
            _print_json(final)
        raise CliError(f"launch failed: {final['message']}")
    if args.json:
        _print_json(final["model"])
    else:
        print(final["model"]["model_uid"])
    return 0


def cmd_terminate(client: ControlClient, args: argparse.Namespace) -> int:
    data = client.call("DELETE", f"/v1/models/{args.model_uid}", timeout=None)
    if args.json:
        _print_json(data)
    else:
        print(f"terminated {data['terminated']}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error style of the rest of xinfctl."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"xinfctl: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's copy of an option must not reset a value given before the subcommand.
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable JSON output")
    common.add_argument("--socket", type=Path, default=argparse.SUPPRESS, help="control socket (default: $XINFD_CONTROL_SOCKET or "
                        "$XINFERENCE_HOME/xinfd.sock)")
    parser = _Parser(prog="xinfctl", description="Control a running xinfd daemon.", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("status", parents=[common], help="daemon status").set_defaults(func=cmd_status)
    sub.add_parser("engines", parents=[common], help="engines and their availability").set_defaults(func=cmd_engines)
    sub.add_parser("families", parents=[common], help="model families that can be launched").set_defaults(
        func=cmd_families)
    sub.add_parser("list", parents=[common], help="running models and replicas").set_defaults(func=cmd_list)
    launch = sub.add_parser("launch", parents=[common], help="launch a model (unknown --key value pairs are "
                            "passed to the engine as options)")
    launch.add_argument("-n", "--model-name", required=True)
    launch.add_argument("-e", "--model-engine")
    launch.add_argument("-r", "--replica", type=int, default=1)
    launch.add_argument("-u", "--model-uid")
    launch.add_argument("--env", nargs=2, action="append", metavar=("NAME", "VALUE"),
                        help="environment variable for this model's replicas (repeatable)")
    launch.set_defaults(func=cmd_launch)
    terminate = sub.add_parser("terminate", parents=[common], help="stop a model and all its replicas")
    terminate.add_argument("model_uid")
    terminate.set_defaults(func=cmd_terminate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.json = getattr(args, "json", False)
    args.socket = getattr(args, "socket", None)
    try:
        if extra and args.command != "launch":
            raise CliError(f"unrecognized arguments: {' '.join(extra)}", EXIT_USAGE)
        args.extra = extra
        if args.command == "launch" and args.replica < 1:
            raise CliError(f"--replica must be at least 1, got {args.replica}", EXIT_USAGE)
        client = ControlClient(args.socket or default_socket())
        return int(args.func(client, args))
    except CliError as exc:
        print(f"xinfctl: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("xinfctl: interrupted (a launch in progress continues in the daemon)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
