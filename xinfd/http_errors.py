"""One error envelope and one error middleware for every HTTP server of xinfd (front end, control socket,
replica worker), and one JSON body parser for all of them.

Every failure becomes OpenAI's error envelope ``{"error": {"message", "type", "param", "code"}}`` with a
4xx/5xx status: the ``openai`` SDK parses it, ``xinfctl`` reads it from the control socket, and the daemon
relays a replica's envelope to the client unchanged, so there is one error format for every client.

* ``XinfdError`` (``xinfd.errors``): its stable ``code``, ``status``, ``error_type`` and ``param``, plus
  ``Retry-After`` for 503/429 and any ``headers`` the class declares (``WWW-Authenticate`` on a 401);
* aiohttp's HTTP exceptions (no route, wrong method, body too large): their status with a fixed code;
* anything else is a bug: logged with its traceback, answered 500 with a generic message that never carries
  the traceback, an internal path or the exception text.

This module sits beside ``xinfd.errors``, outside ``xinfd.api`` and ``xinfd.worker``, so that the daemon and
the worker share it without either importing the other.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from xinfd.errors import InvalidRequestError, ModelNotReadyError, TooManyRequestsError, XinfdError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Sends ``envelope`` in-band when the response is already on the wire (an SSE stream that started): returns
# the response it finished, or None when a normal error response can still be sent.
LateError = Callable[[web.Request, Mapping[str, Any]], Awaitable[web.StreamResponse | None]]

_SURROGATE = re.compile("[\ud800-\udfff]")
_HTTP_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def error_body(
    message: str, *, error_type: str = "invalid_request_error", code: str | None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error envelope."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def exception_body(exc: XinfdError) -> dict[str, Any]:
    """The envelope of a typed xinfd error: its message, stable code, type and param."""
    return error_body(exc.message, error_type=exc.error_type, code=exc.code, param=exc.param)


def error_response(exc: XinfdError) -> web.Response:
    """The HTTP response of a typed error, with ``Retry-After`` where the client should come back."""
    headers: dict[str, str] = {}
    if isinstance(exc, ModelNotReadyError | TooManyRequestsError):  # 503 while loading, 429 queue full
        headers["Retry-After"] = str(exc.retry_after)
    headers.update(getattr(exc, "headers", {}))  # e.g. WWW-Authenticate on a 401 (xinfd.api.security)
    return web.json_response(exception_body(exc), status=exc.status, headers=headers)


def http_exception_response(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own 4xx/5xx (no route, wrong method, body too large) in the envelope; ``Allow`` is kept."""
    code = _HTTP_CODES.get(exc.status, "http_error")
    kind = "invalid_request_error" if exc.status < 500 else "server_error"
    if exc.status == 404:
        message = f"no route for {request.method} {request.path}"
    elif exc.status == 405:
        message = f"method {request.method} not allowed on {request.path}"
    else:  # aiohttp's default text is "<status>: <reason>"; a specific one (413's sizes) says more
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
    return web.json_response(
        error_body(message, error_type=kind, code=code),
        status=exc.status,
        headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
    )


def _method_and_path(request: web.Request) -> str:
    return f"{request.method} {request.path}"


def make_error_middleware(
    *,
    internal_message: str,
    late: LateError | None = None,
    describe: Callable[[web.Request], str] = _method_and_path,
) -> Middleware:
    """The error middleware of one app.

    :param internal_message: the message of a 500 caused by a bug, naming where the log is (the traceback
        goes to that log, never to the client).
    :param late: how to report an error once the response has started (the daemon's SSE relay); None when
        handlers never start a response before they can fail.
    :param describe: the request as log lines name it (the worker adds its request id).
    """

    @web.middleware
    async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Convert typed errors, aiohttp HTTP errors and bugs to the envelope; a bug never stops the server."""
        try:
            return await handler(request)
        except XinfdError as exc:
            if exc.status >= 500 and exc.status != 503:  # 503 is "loading / draining, come back", not a fault
                log.error("%s failed: %s", describe(request), exc.message)
            answered = await late(request, exception_body(exc)) if late is not None else None
            return answered if answered is not None else error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # redirects and 2xx raised as exceptions are answers, not errors
            return http_exception_response(request, exc)
        except Exception:
            # The top of a request task: log with the traceback, answer 500, keep serving.
            log.exception("%s failed", describe(request))
            body = error_body(internal_message, error_type="server_error", code="internal_error")
            answered = await late(request, body) if late is not None else None
            return answered if answered is not None else web.json_response(body, status=500)

    return error_middleware


def parse_json(raw: bytes) -> Any:
    """Decode a request body; whatever the parser refuses or cannot hold is a 400 saying why.

    Beyond malformed JSON and bad UTF-8, Python's parser raises on input it accepts syntactically but cannot
    represent: an integer of more digits than ``sys.get_int_max_str_digits()`` (``ValueError``) and nesting
    deeper than the recursion limit (``RecursionError``). Both would otherwise be a 500.
    """
    try:
        body = json.loads(raw)
    except RecursionError:
        raise InvalidRequestError("request body is not valid JSON: nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from None
    except ValueError:  # the int-digits limit: its own text points at sys.set_int_max_str_digits()
        limit = sys.get_int_max_str_digits()
        raise InvalidRequestError(
            f"request body is not valid JSON: a number has more than {limit} digits"
        ) from None
    # json.loads turns "\\ud800" (and UTF-8 bytes of a surrogate, decoded with "surrogatepass") into a str that
    # cannot be encoded again: a tokenizer or an SSE frame would fail on it mid-request. Only bodies that can
    # hold one at all are walked.
    if b"\\ud" in raw or b"\\uD" in raw or b"\xed" in raw:
        where = lone_surrogate(body)
        if where is not None:
            field, char = where
            raise InvalidRequestError(
                f"request body holds a lone surrogate (\\u{ord(char):04x}) in {field or 'the body'}: text must be "
                "valid Unicode (a surrogate pair, or UTF-8)",
                param=field or None,
            )
    return body


def lone_surrogate(value: Any) -> tuple[str, str] | None:
    """The first string in a decoded JSON value holding an unpaired surrogate: (its path, the character).

    The path is the field as a request names it (``messages[0].content``); keys are checked too.
    """
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            bad = _SURROGATE.search(item)
            if bad is not None:
                return path, bad.group()
        elif isinstance(item, dict):
            for key, child in item.items():
                bad = _SURROGATE.search(key)
                if bad is not None:
                    return path, bad.group()
                stack.append((f"{path}.{key}" if path else key, child))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(item))
    return None


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """``parse_json`` for a body that must be a JSON object (every OpenAI request is)."""
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise InvalidRequestError(f"request body must be a JSON object, not {_json_type(body)}")
    return body


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"
