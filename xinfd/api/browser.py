"""Browser safety of the front end: which ``Host`` names it answers, cross-origin requests, JSON bodies.

A daemon without API keys (the default) trusts whoever can connect, and a web page the operator opens can
connect too: directly to ``127.0.0.1`` (a cross-origin POST with a "simple" content type needs no preflight),
or through DNS rebinding, where the page's own name starts resolving to ``127.0.0.1`` and the browser treats
the daemon as the page's origin. So, on every request, before the access check:

* **Host**: only names the daemon serves are answered (else 421 Misdirected Request): its bind address,
  ``localhost``, ``127.0.0.1`` and ``[::1]`` with any port, and ``allowed_hosts`` (``name``, ``*.domain``,
  ``*``). A daemon bound to ``0.0.0.0``/``::`` does not know its names, so there it also accepts any IP
  address (rebinding needs a name) and, once ``api_keys`` are set, any name (a browser never has the key);
* **Origin**: a request carrying a foreign ``Origin`` is refused with 403 unless ``cors_allowed_origins``
  lists it (or ``*``); allowed origins get CORS headers and answered preflights (``OPTIONS``), which carry no
  key and so are answered here, before the key check;
* **Content-Type**: a body sent with ``POST``/``PUT``/``PATCH``/``DELETE`` must be ``application/json``
  (else 415): the content types a page may send cross-origin without a preflight are never JSON. The one
  exception is ``multipart/form-data`` on the image-to-image uploads (``MULTIPART_PATHS``), whose API (OpenAI's
  and Xinference's) is a file upload; there a foreign page is still stopped by the Origin and Host checks
  (browsers send ``Origin`` with every cross-origin POST), and it could only start an image generation.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from xinfd.errors import XinfdError
from xinfd.http_errors import Handler

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ALLOWED_ORIGIN_KEY = web.RequestKey("xinfd_allowed_origin", str)
# Routes whose body is a multipart file upload (xinfd.api.images): OpenAI's edits and Xinference's variations.
MULTIPART_PATHS = frozenset({"/v1/images/edits", "/v1/images/variations"})


class MisdirectedRequestError(XinfdError):
    """The ``Host`` header names a server this daemon is not (HTTP 421)."""

    code = "unknown_host"
    status = 421
    error_type = "invalid_request_error"


class OriginNotAllowedError(XinfdError):
    """A browser request from an origin that ``cors_allowed_origins`` does not list (HTTP 403)."""

    code = "origin_not_allowed"
    status = 403
    error_type = "invalid_request_error"


class UnsupportedMediaTypeError(XinfdError):
    """A request body that is not ``application/json`` (HTTP 415)."""

    code = "unsupported_media_type"
    status = 415
    error_type = "invalid_request_error"


def split_host(header: str) -> tuple[str, str | None]:
    """``Host`` header -> (lower-case name without brackets or trailing dot, port or None)."""
    text = header.strip().lower()
    if text.startswith("["):
        name, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
        return name, port or None
    if text.count(":") == 1:
        name, _, port = text.partition(":")
        return name.rstrip("."), port or None
    return text.rstrip("."), None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _matches(name: str, pattern: str) -> bool:
    pattern = pattern[1:-1] if pattern.startswith("[") and pattern.endswith("]") else pattern
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern


@dataclass(frozen=True, slots=True, kw_only=True)
class BrowserPolicy:
    """The Host, Origin and Content-Type rules of the front end, from ``Settings``."""

    bind_host: str
    names: tuple[str, ...] = ()
    keys_set: bool = False
    origins: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Any) -> BrowserPolicy:
        bind = settings.host.strip().lower()
        return cls(
            bind_host=bind[1:-1] if bind.startswith("[") and bind.endswith("]") else bind,
            names=tuple(settings.allowed_hosts),
            keys_set=bool(settings.api_keys),
            origins=tuple(settings.cors_allowed_origins),
        )

    @property
    def wildcard(self) -> bool:
        return self.bind_host in WILDCARD_BINDS

    def host_allowed(self, header: str | None) -> bool:
        if header is None:
            return True  # HTTP/1.0 clients send none; browsers always do
        name, _ = split_host(header)
        if name in LOOPBACK_NAMES or name == self.bind_host:
            return True
        if any(_matches(name, pattern) for pattern in self.names):
            return True
        return self.wildcard and (self.keys_set or _is_ip(name))

    def origin_allowed(self, origin: str, host_header: str | None) -> bool:
        """Same origin (the page was served by this daemon's own name), or listed."""
        if "*" in self.origins or origin in self.origins:
            return True
        if origin == "null" or host_header is None:
            return False
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        return parts.scheme in ("http", "https") and parts.netloc.lower() == host_header.strip().lower()


def _check_content_type(request: web.Request) -> None:
    if request.method not in _UNSAFE_METHODS:
        return
    has_body = (request.content_length or 0) > 0 or "chunked" in request.headers.get("Transfer-Encoding", "")
    if not has_body:
        return
    mimetype = request.content_type.lower()
    if mimetype == "multipart/form-data" and request.path in MULTIPART_PATHS:
        return
    if mimetype != "application/json" and not (mimetype.startswith("application/") and mimetype.endswith("+json")):
        raise UnsupportedMediaTypeError(
            f"request body must be sent with Content-Type: application/json, not {mimetype!r}"
        )


def _preflight(request: web.Request, origin: str) -> web.Response:
    requested = request.headers.get("Access-Control-Request-Headers", "")
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
            "Access-Control-Allow-Headers": requested or "Authorization, Content-Type",
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        },
    )


def browser_middleware(policy_of: Callable[[], BrowserPolicy]) -> Middleware:
    """The Host and Origin checks; inside the error middleware, before the key check."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        policy = policy_of()
        host = request.headers.get("Host")
        if not policy.host_allowed(host):
            raise MisdirectedRequestError(
                f"this server does not answer to the host name {split_host(host or '')[0]!r}; an operator can add "
                "it to allowed_hosts (XINFD_ALLOWED_HOSTS)"
            )
        origin = request.headers.get("Origin")
        if origin is not None:
            if not policy.origin_allowed(origin, host):
                raise OriginNotAllowedError(
                    f"cross-origin requests from {origin!r} are not allowed; an operator can add the origin to "
                    "cors_allowed_origins (XINFD_CORS_ALLOWED_ORIGINS)"
                )
            request[ALLOWED_ORIGIN_KEY] = origin
            if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                return _preflight(request, origin)
        return await handler(request)

    return middleware


@web.middleware
async def json_body_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """415 for a body that is not JSON; after the key check, so a keyless client learns nothing more."""
    _check_content_type(request)
    return await handler(request)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: an allowed origin may read the answer (streams included, errors too)."""
    origin = request.get(ALLOWED_ORIGIN_KEY)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"


class BrowserPolicyHolder:
    """The current ``BrowserPolicy``, rebuilt when SIGHUP swaps in new settings."""

    def __init__(self, settings_of: Callable[[], Any]) -> None:
        self._settings_of = settings_of
        self._settings: Any = None
        self._policy: BrowserPolicy | None = None

    def __call__(self) -> BrowserPolicy:
        settings = self._settings_of()
        if settings is not self._settings or self._policy is None:
            self._policy = BrowserPolicy.from_settings(settings)
            self._settings = settings
        return self._policy
