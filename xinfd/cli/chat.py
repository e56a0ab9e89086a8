"""``xinfctl chat UID "prompt"``: a quick try of a model from the terminal, streamed as it is generated.

It talks to the front end (not the control socket), like any OpenAI client would: the endpoint is
``--endpoint``, else ``XINFERENCE_ENDPOINT``, else the configured ``endpoint`` setting; the key is
``--api-key`` or ``XINFD_API_KEY``. Standard library only, so ``xinfctl`` stays quick to start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from xinfd.cli.client import EXIT_FAILURE, EXIT_USAGE, CliError, ControlClient
from xinfd.config import load_settings
from xinfd.errors import ConfigError


def _endpoint(args: argparse.Namespace) -> str:
    if args.endpoint:
        return str(args.endpoint).rstrip("/")
    try:
        return load_settings().endpoint.rstrip("/")  # XINFERENCE_ENDPOINT, or the config file's endpoint
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


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
    key = args.api_key or os.environ.get("XINFD_API_KEY")
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
    chat.add_argument("--endpoint", help="front-end URL (default: $XINFERENCE_ENDPOINT or the config)")
    chat.add_argument("--api-key", help="API key (default: $XINFD_API_KEY)")
    chat.add_argument("--timeout", type=float, default=600.0, help="seconds without data before giving up")
    chat.set_defaults(func=cmd_chat)
