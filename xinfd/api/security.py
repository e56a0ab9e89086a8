"""Who may use the front end: allowed client IPs (behind trusted proxies) and API keys with scopes.

Xinference serves without authentication and several servers have let one HTTP method slip past their auth
check; so the rules here are decided per request *before* routing matters, from the path and method alone
(``required_scope``), and default to the inference scope: only ``/health``, ``/health/models/<uid>`` and
``/v1/cluster/auth`` are open (load balancers and container health checks carry no key; Xinference's client
asks the latter whether to send its key), with reading the console's files and generated-image links
(``/v1/images/files/*``, whose unguessable names are the permission), only ``/metrics`` takes the metrics
scope, management takes the admin scope, and every other path and method — known routes, unknown routes,
OPTIONS, HEAD — needs the inference scope. The IP check comes first: a denied address gets 403 whatever key
it sends.

Management over HTTP (``xinfd.api.xinference`` and the ``/control`` mount of the control API) is what changes
the daemon or describes the host: every method of ``/control/*``, ``/v1/virtualenvs``, ``/v1/cluster/*``,
``/v1/workers``, ``/v1/supervisor``, any ``/v1/models/{uid}/...`` sub-resource, and every method but GET/HEAD
on ``/v1/models``, ``/v1/models/{uid}``, ``/v1/model_registrations/*`` and ``/v1/engines/*`` (reading which
models run and what the families are stays with the inference scope, as Xinference's ``models:list``). It needs
a key from ``admin_api_keys``; with none configured it is refused (403) even on an open front end, and the
Unix socket stays the way to manage. Keys from ``api_keys`` never grant it. When only admin keys are configured,
inference and metrics stay open, as with no keys at all.

The client address is the socket peer. ``X-Forwarded-For`` is believed only when the peer is a configured
trusted proxy, and then read from the right: the first address that is not itself a trusted proxy is the
client
(the left part of the header is whatever the client chose to send, so it proves nothing).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from xinfd.api.readiness import is_model_readiness_path
from xinfd.errors import XinfdError

log = logging.getLogger(__name__)

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Paths that need no key; still subject to the IP check.
PUBLIC_PATHS = frozenset({"/health", "/v1/cluster/auth"})
# The web console's static files (xinfd.api.ui): public, since they hold no data; every API call the page
# makes is authorised by the admin key the operator types into it.
PUBLIC_PREFIXES = ("/ui",)
# Generated images behind ``response_format=url`` links: the link's 128-bit random name, valid for the image
# lifetime, is the permission (like OpenAI's pre-signed links), so a browser or another program can fetch
# it without the key (``xinfd.api.images``). Read methods only, and still subject to the IP check.
IMAGE_FILES_PREFIX = "/v1/images/files"
METRICS_PATH = "/metrics"
# Management: every method of these paths and everything below them (see the module docstring).
ADMIN_PREFIXES = ("/control", "/v1/virtualenvs", "/v1/cluster", "/v1/workers", "/v1/supervisor", "/v1/clusters")
# Read with the inference scope (GET/HEAD); any other method on them is management.
READ_PREFIXES = ("/v1/model_registrations", "/v1/engines")
READ_METHODS = frozenset({"GET", "HEAD"})


class Scope(StrEnum):
    """What a key may do: ``inference`` (every /v1 route but management), ``metrics`` (``/metrics``) and
    ``admin`` (management over HTTP)."""

    INFERENCE = "inference"
    METRICS = "metrics"
    ADMIN = "admin"


NO_ADMIN_KEY = (
    "HTTP management is disabled: no admin API key is configured; manage this daemon with xinfctl over its "
    "Unix socket, or set XINFD_ADMIN_API_KEYS and send one as 'Authorization: Bearer <key>'"
)


class AuthenticationError(XinfdError):
    """No API key, or one the daemon does not know (OpenAI answers 401 ``invalid_api_key``)."""

    code = "invalid_api_key"
    status = 401
    error_type = "invalid_request_error"
    headers = {"WWW-Authenticate": 'Bearer realm="xinfd"'}  # noqa: RUF012  # read-only class constant


class PermissionDeniedError(XinfdError):
    """The client address is not allowed, or the key lacks the scope of the route."""

    code = "permission_denied"
    status = 403
    error_type = "invalid_request_error"


def normalize_ip(text: str) -> IPAddress | None:
    """Parse an address from a socket or a header; IPv4-mapped IPv6 (``::ffff:a.b.c.d``) becomes IPv4.

    A dual-stack listener on ``::`` reports IPv4 clients as mapped addresses, and operators write IPv4 rules,
    so both forms must compare equal. Zone ids (``fe80::1%eth0``) are dropped. ``None`` if not an address.
    """
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _normalize_network(network: IPNetwork) -> IPNetwork:
    """``::ffff:10.0.0.0/104`` written in a rule means ``10.0.0.0/8``."""
    if isinstance(network, IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    return network


def _in_any(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


@dataclass(frozen=True, slots=True)
class SecurityPolicy:
    """The access rules of the front end, built from ``Settings`` (and rebuilt on SIGHUP)."""

    allowed_ips: tuple[IPNetwork, ...] = ()
    trusted_proxies: tuple[IPNetwork, ...] = ()
    keys: Mapping[str, frozenset[Scope]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Any) -> SecurityPolicy:
        """``admin_api_keys`` get every scope, ``api_keys`` inference and metrics, ``metrics_api_keys`` (for
        scrapers) only metrics; a key listed twice keeps its widest grant."""
        keys: dict[str, frozenset[Scope]] = {}
        for key in settings.metrics_api_keys:
            keys[key] = frozenset({Scope.METRICS})
        for key in settings.api_keys:
            keys[key] = frozenset({Scope.INFERENCE, Scope.METRICS})
        for key in settings.admin_api_keys:
            keys[key] = frozenset(Scope)
        return cls(
            allowed_ips=tuple(_normalize_network(n) for n in settings.allowed_ips),
            trusted_proxies=tuple(_normalize_network(n) for n in settings.trusted_proxies),
            keys=keys,
        )

    def client_ip(self, peer: str | None, forwarded_for: Iterable[str] = ()) -> IPAddress | None:
        """The client's address: the peer, or, if the peer is a trusted proxy, the rightmost untrusted hop.

        ``None`` when the address cannot be known (no peer, or a garbled hop after a trusted proxy).
        """
        address = normalize_ip(peer) if peer else None
        if address is None or not _in_any(address, self.trusted_proxies):
            return address
        hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
        for hop in reversed(hops):
            hop_address = normalize_ip(hop)
            if hop_address is None:
                return None  # a trusted proxy passed on garbage: refuse rather than guess
            if not _in_any(hop_address, self.trusted_proxies):
                return hop_address
            address = hop_address
        return address  # every hop is a trusted proxy: the request came from inside

    def ip_allowed(self, address: IPAddress | None) -> bool:
        if not self.allowed_ips:
            return True
        return address is not None and _in_any(address, self.allowed_ips)

    def scopes_of(self, authorization: str | None) -> frozenset[Scope] | None:
        """The scopes of the bearer key in ``authorization``; ``None`` for a missing or unknown key."""
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        found: frozenset[Scope] | None = None
        candidate = token.encode()
        for key, scopes in self.keys.items():
            # Compare with every key in constant time, so timing tells nothing about how close a guess was.
            if hmac.compare_digest(candidate, key.encode()):
                found = scopes
        return found

    @property
    def authenticates(self) -> bool:
        """Whether any key is configured (what ``/v1/cluster/auth`` tells Xinference's client)."""
        return bool(self.keys)

    def check(
        self,
        *,
        path: str,
        peer: str | None,
        forwarded_for: Iterable[str],
        authorization: str | None,
        method: str = "GET",
    ) -> None:
        """Raise ``PermissionDeniedError`` (403) or ``AuthenticationError`` (401), or return if allowed."""
        client = self.client_ip(peer, forwarded_for)
        if not self.ip_allowed(client):
            raise PermissionDeniedError(f"client address {client or 'unknown'} is not allowed")
        needed = required_scope(path, method)
        if needed is Scope.ADMIN:
            if not any(Scope.ADMIN in scopes for scopes in self.keys.values()):
                raise PermissionDeniedError(NO_ADMIN_KEY)
        elif needed is None or all(Scope.ADMIN in scopes for scopes in self.keys.values()):
            return  # public, or no inference/metrics key configured (none, or admin keys only): open
        scopes = self.scopes_of(authorization)
        if scopes is None:
            what = "an invalid API key was given" if authorization else "no API key was given"
            raise AuthenticationError(f"{what}; send 'Authorization: Bearer <key>'")
        if needed not in scopes:
            raise PermissionDeniedError(
                f"this API key lacks the {needed.value!r} scope needed for {method} {path}"
                + (" (use a key from XINFD_ADMIN_API_KEYS)" if needed is Scope.ADMIN else "")
            )


def _under(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def required_scope(path: str, method: str = "GET") -> Scope | None:
    """The scope a request needs; anything not known to be public needs at least ``inference`` (default deny).

    Management is recognised by path shape, whether or not a route exists there, so an unknown method or a
    misspelt sub-path of a management resource is refused as management, not let through as inference.
    """
    method = method.upper()
    if path in PUBLIC_PATHS or is_model_readiness_path(path):  # health checks carry no key
        return None
    if _under(path, PUBLIC_PREFIXES) and method in READ_METHODS:  # the console's files, never data
        return None
    if path.startswith(IMAGE_FILES_PREFIX + "/") and method in READ_METHODS:  # capability links
        return None
    if path == METRICS_PATH:
        return Scope.METRICS
    if _under(path, ADMIN_PREFIXES):
        return Scope.ADMIN
    parts = path.split("/")
    if path.startswith("/v1/models/") and len(parts) > 4:  # /v1/models/{uid}/progress, /cancel, ...
        return Scope.ADMIN
    if path.rstrip("/") == "/v1/models" or path.startswith("/v1/models/") or _under(path, READ_PREFIXES):
        return Scope.INFERENCE if method in READ_METHODS else Scope.ADMIN
    return Scope.INFERENCE


def peer_address(request: web.Request) -> str | None:
    """The socket peer's address, never a header (``request.remote`` may be rewritten by other middleware)."""
    transport = request.transport
    peername = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peername, tuple | list) and peername:
        return str(peername[0])
    return None


class PolicyHolder:
    """The current policy of an app; rebuilt when the daemon swaps in reloaded settings (SIGHUP)."""

    def __init__(self, settings_of: Callable[[], Any]) -> None:
        self._settings_of = settings_of
        self._settings: Any = None
        self._policy = SecurityPolicy()

    @property
    def policy(self) -> SecurityPolicy:
        settings = self._settings_of()
        if settings is not self._settings:
            self._policy = SecurityPolicy.from_settings(settings)
            self._settings = settings
        return self._policy


def security_middleware(holder: PolicyHolder) -> Middleware:
    """The access check of every request; inside the error middleware, so refusals are JSON envelopes."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            holder.policy.check(
                path=request.path,
                method=request.method,
                peer=peer_address(request),
                forwarded_for=request.headers.getall("X-Forwarded-For", []),
                authorization=request.headers.get("Authorization"),
            )
        except AuthenticationError:
            log.info(
                "refused %s %s from %s: bad or missing API key",
                request.method,
                request.path,
                peer_address(request),
            )
            raise
        except PermissionDeniedError as exc:
            log.info("refused %s %s from %s: %s", request.method, request.path, peer_address(request), exc)
            raise
        return await handler(request)

    return middleware
