"""``xinfctl chat UID "prompt"``: a quick try of a model from the terminal, streamed as it is generated.

It talks to the front end (not the control socket), like any OpenAI client would: the endpoint is
``--endpoint`` (xinfctl's global option), else ``XINFERENCE_ENDPOINT``, else the ``endpoint`` key of the
daemon's config file (``$XINFD_CONFIG``, else ``/etc/xinfd/xinfd.toml``), else the daemon's default; the key is
``--api-key``, else ``XINFD_API_KEY``, else the admin key (``--api-key-file`` / ``XINFD_ADMIN_API_KEY``).
Standard library only, so ``xinfctl`` stays quick to start; it reads these few names itself
rather than importing the daemon's settings module (a test checks they match the daemon's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xinfd.cli.client import EXIT_FAILURE, EXIT_USAGE, CliError, ControlClient, admin_key

# The daemon's names for the same things (``xinfd.config``); tests/unit/cli/test_chat_endpoint.py keeps them equal.
ENDPOINT_ENV_VAR = "XINFERENCE_ENDPOINT"
CONFIG_ENV_VAR = "XINFD_CONFIG"
DEFAULT_CONFIG_PATH = Path("/etc/xinfd/xinfd.toml")
DEFAULT_ENDPOINT = "http://127.0.0.1:9997"


def _endpoint(args: argparse.Namespace) -> str:
    if args.endpoint:
        return check_url(str(args.endpoint), "--endpoint")
    return front_end_url(os.environ)


def front_end_url(env: Mapping[str, str], default_config: Path = DEFAULT_CONFIG_PATH) -> str:
    """The front end's URL: ``XINFERENCE_ENDPOINT``, else the config file's ``endpoint``, else the default.

    A bad value is a ``CliError`` (exit 2) naming where it came from, as the daemon would refuse it.
    """
    raw = env.get(ENDPOINT_ENV_VAR, "").strip()
    if raw:
        return check_url(raw, ENDPOINT_ENV_VAR)
    named = env.get(CONFIG_ENV_VAR, "").strip()
    path = Path(named).expanduser() if named else default_config
    if not named and not path.is_file():
        return DEFAULT_ENDPOINT
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: cannot read the config file: {exc}", EXIT_USAGE) from None
    value = data.get("endpoint")
    if value is None:
        return DEFAULT_ENDPOINT
    if not isinstance(value, str):
        raise CliError(f"{path}: endpoint: expected an http:// or https:// URL, got {value!r}", EXIT_USAGE)
    return check_url(value, f"{path}: endpoint")


def check_url(value: str, where: str) -> str:
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018  # raises ValueError on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"{where}: expected an http:// or https:// URL, got {value!r}", EXIT_USAGE)
    return value.rstrip("/")


def _error_message(raw: bytes, status: int) -> str:
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}: {raw[:200].decode(errors='replace')}"


def cmd_chat(client: ControlClient, args: argparse.Namespace) -> int:
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": args.prompt})
    body: dict[str, Any] = {"model": args.model_uid, "messages": messages, "stream": True}
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    # An admin key (the one --endpoint management uses) has every scope, so it serves chat too.
    key = args.api_key or os.environ.get("XINFD_API_KEY") or admin_key(args.api_key_file)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    url = f"{_endpoint(args)}/v1/chat/completions"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        response = urllib.request.urlopen(request, timeout=args.timeout)
    except urllib.error.HTTPError as exc:
        code = EXIT_USAGE if 400 <= exc.code < 500 and exc.code not in (401, 403, 409, 429) else EXIT_FAILURE
        raise CliError(_error_message(exc.read(), exc.code), code) from None
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
    with response:
        return _print_stream(response)


def _print_stream(response: Any) -> int:
    for raw_line in response:
        line = raw_line.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line.startswith("data:"):
            continue  # blank separators and ": ping" keepalives
        data = line[5:].strip()
        if data == "[DONE]":
            print()
            return 0
        event = json.loads(data)
        if "error" in event:
            print()
            raise CliError(f"stream failed: {event['error'].get('message')}")
        for choice in event.get("choices", []):
            text = (choice.get("delta") or {}).get("content")
            if text:
                sys.stdout.write(text)
                sys.stdout.flush()
    print()
    raise CliError("stream ended without [DONE] (connection cut)")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    chat = sub.add_parser("chat", parents=[common], help="send one chat message and stream the answer")
    chat.add_argument("model_uid")
    chat.add_argument("prompt")
    chat.add_argument("--system", help="a system message before the prompt")
    chat.add_argument("--max-tokens", type=int)
    chat.add_argument("--api-key", help="API key (default: $XINFD_API_KEY)")
    chat.add_argument("--timeout", type=float, default=600.0, help="seconds without data before giving up")
    chat.set_defaults(func=cmd_chat, front_end=True)  # its key may come from --api-key-file too
