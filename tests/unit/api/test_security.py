"""Front-end access control: the full matrix route x method x key x client address, over real TCP.

Clients come from two loopback addresses (127.0.0.1 allowed, 127.0.0.2 denied: all of 127/8 is loopback on
Linux), so the check sees a real socket peer, not a header or a mocked transport.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.unit.api.test_front_end import make_state
from xinfd.api.openai import make_api_app
from xinfd.api.security import Scope, SecurityPolicy, normalize_ip, required_scope
from xinfd.api.state import STATE

ServerFactory = Callable[..., Any]

FULL_KEY = "sk-full-0123456789"
METRICS_KEY = "sk-metrics-abcdef"
ADMIN_KEY = "sk-admin-9876543210"
ROUTES = [
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/models/echo",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/no-such-route",
    "/admin",
    "/health/",
    "/metrics/x",
    # Xinference's management API and the /control mount (admin scope for what changes the daemon)
    "/v1/cluster/auth",
    "/v1/models/echo/progress",
    "/v1/models/echo/cancel",
    "/v1/models/echo/no-such-sub-route",
    "/v1/model_registrations/LLM",
    "/v1/model_registrations/LLM/echo",
    "/v1/engines/echo",
    "/v1/virtualenvs",
    "/v1/cluster/info",
    "/v1/cluster/devices",
    "/v1/workers",
    "/v1/supervisor",
    "/control",
    "/control/v1/status",
    "/control/v1/models",
    "/control/v1/models/echo",
    "/control/no-such-route",
]
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
KEYS: dict[str, str | None] = {
    "none": None,
    "wrong": "sk-wrong",
    "metrics": METRICS_KEY,
    "full": FULL_KEY,
    "admin": ADMIN_KEY,
    "basic": "Basic dXNlcjpwYXNz",
}
# Written out here rather than derived from required_scope, so the test checks the rule, not itself.
PUBLIC = {"/health", "/v1/cluster/auth"}
ADMIN_EVERY_METHOD = {
    "/v1/models/echo/progress", "/v1/models/echo/cancel", "/v1/models/echo/no-such-sub-route", "/v1/virtualenvs",
    "/v1/cluster/info", "/v1/cluster/devices", "/v1/workers", "/v1/supervisor", "/control", "/control/v1/status",
    "/control/v1/models", "/control/v1/models/echo", "/control/no-such-route",
}
READ_WITH_INFERENCE = {"/v1/models", "/v1/models/echo", "/v1/model_registrations/LLM",
                       "/v1/model_registrations/LLM/echo", "/v1/engines/echo"}


def needed(route: str, method: str) -> str:
    if route in PUBLIC:
        return "public"
    if route == "/metrics":
        return "metrics"
    if route in ADMIN_EVERY_METHOD or (route in READ_WITH_INFERENCE and method not in ("GET", "HEAD")):
        return "admin"
    return "inference"


def expected(route: str, key: str, allowed_ip: bool, method: str = "GET", admin_configured: bool = True) -> str:
    """'denied_ip', 'no_admin' (403), 'unauthenticated', 'scope' or 'pass'."""
    if not allowed_ip:
        return "denied_ip"
    scope = needed(route, method)
    if scope == "public":
        return "pass"
    if scope == "admin" and not admin_configured:
        return "no_admin"
    if key == "admin" and not admin_configured:
        key = "wrong"  # an admin key the daemon was not given is just an unknown key
    if key in ("none", "wrong", "basic"):
        return "unauthenticated"
    if key == "admin" or (scope == "metrics" and key in ("metrics", "full")) or (
        scope == "inference" and key == "full"
    ):
        return "pass"
    return "scope"


async def _request(session: aiohttp.ClientSession, method: str, url: str, key: str | None) -> tuple[int, Any]:
    headers = {}
    if key is not None:
        headers["Authorization"] = key if key.startswith("Basic ") else f"Bearer {key}"
    async with session.request(method, url, headers=headers, data=b"{}") as resp:
        body = await resp.json() if method != "HEAD" and resp.content_type == "application/json" else None
        return resp.status, (body, resp.headers.get("WWW-Authenticate"))


@pytest.mark.parametrize("admin_configured", [True, False], ids=["admin-keys", "no-admin-keys"])
async def test_auth_matrix_every_route_method_key_and_address(
    tmp_path: Path, aiohttp_server: ServerFactory, admin_configured: bool
) -> None:
    admin = {"XINFD_ADMIN_API_KEYS": ADMIN_KEY} if admin_configured else {}
    state = make_state(
        tmp_path,
        XINFERENCE_ALLOWED_IPS="127.0.0.1/32,::1",
        XINFD_API_KEYS=FULL_KEY,
        XINFD_METRICS_API_KEYS=METRICS_KEY,
        **admin,
    )
    server = await aiohttp_server(make_api_app(state), host="127.0.0.1")
    seen: dict[str, int] = {}
    for source, allowed in (("127.0.0.1", True), ("127.0.0.2", False)):
        connector = aiohttp.TCPConnector(local_addr=(source, 0))
        async with aiohttp.ClientSession(connector=connector) as session:
            for route in ROUTES:
                for method in METHODS:
                    for key_name, key in KEYS.items():
                        status, (body, challenge) = await _request(
                            session, method, str(server.make_url(route)), key
                        )
                        want = expected(route, key_name, allowed, method, admin_configured)
                        case = f"{source} {method} {route} key={key_name}: {status} {body}"
                        seen[want] = seen.get(want, 0) + 1
                        if want == "pass":
                            assert status not in (401, 403), case
                            continue
                        assert status == (401 if want == "unauthenticated" else 403), case
                        assert challenge == ('Bearer realm="xinfd"' if status == 401 else None), case
                        if method != "HEAD":
                            assert body["error"]["code"] == (
                                "invalid_api_key" if status == 401 else "permission_denied"
                            ), case
                            if want == "no_admin":
                                assert "XINFD_ADMIN_API_KEYS" in body["error"]["message"], case
                                assert "Unix socket" in body["error"]["message"], case
    kinds = ("denied_ip", "unauthenticated", "scope", "pass") + (() if admin_configured else ("no_admin",))
    assert all(seen.get(k, 0) > 0 for k in kinds), seen


async def test_management_refused_without_admin_keys_even_when_open(
    tmp_path: Path, aiohttp_client: ServerFactory
) -> None:
    """No key at all configured: inference is open, management still needs an admin key (403, not 401)."""
    client = await aiohttp_client(make_api_app(make_state(tmp_path)))
    assert (await client.get("/v1/models")).status == 200
    for method, path in (("POST", "/v1/models"), ("DELETE", "/v1/models/x"), ("GET", "/control/v1/models"),
                         ("GET", "/v1/cluster/info"), ("POST", "/v1/model_registrations/LLM")):
        resp = await client.request(method, path, json={})
        body = await resp.json()
        assert resp.status == 403, (method, path, body)
        assert "XINFD_ADMIN_API_KEYS" in body["detail"] and "Unix socket" in body["detail"]
    assert await (await client.get("/v1/cluster/auth")).json() == {"auth": False}


async def test_admin_keys_only_keep_inference_open(tmp_path: Path, aiohttp_client: ServerFactory) -> None:
    client = await aiohttp_client(make_api_app(make_state(tmp_path, XINFD_ADMIN_API_KEYS=ADMIN_KEY)))
    assert (await client.get("/v1/models")).status == 200
    assert (await client.get("/metrics")).status == 200
    assert (await client.get("/control/v1/models")).status == 401
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert (await client.get("/control/v1/models", headers=admin)).status == 200
    # Xinference's client asks this (with no key) to decide whether to send its api_key.
    assert await (await client.get("/v1/cluster/auth")).json() == {"auth": True}


async def test_allowed_requests_reach_the_handlers(tmp_path: Path, aiohttp_client: ServerFactory) -> None:
    client = await aiohttp_client(
        make_api_app(make_state(tmp_path, XINFD_API_KEYS=FULL_KEY, XINFD_METRICS_API_KEYS=METRICS_KEY))
    )
    full = {"Authorization": f"Bearer {FULL_KEY}"}
    assert (await client.get("/v1/models", headers=full)).status == 200
    assert (await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"})).status == 200
    assert (await client.get("/health")).status == 200
    # Not the right scheme, not the right key, or the key as a different case: all refused.
    for header in (f"Token {FULL_KEY}", f"Bearer {FULL_KEY.upper()}", "Bearer", f"Bearer {FULL_KEY}x"):
        assert (await client.get("/v1/models", headers={"Authorization": header})).status == 401, header


async def test_no_keys_configured_means_no_authentication(
    tmp_path: Path, aiohttp_client: ServerFactory
) -> None:
    client = await aiohttp_client(make_api_app(make_state(tmp_path)))
    assert (await client.get("/v1/models")).status == 200
    assert (await client.get("/metrics")).status == 200


async def test_spoofed_forwarded_for_from_untrusted_peer_is_ignored(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    # Only 10.1.2.3 may connect; 127.0.0.2 is not a trusted proxy, so its X-Forwarded-For claim is ignored.
    state = make_state(tmp_path, XINFERENCE_ALLOWED_IPS="10.1.2.3", XINFD_TRUSTED_PROXIES="127.0.0.1")
    server = await aiohttp_server(make_api_app(state), host="127.0.0.1")
    url = str(server.make_url("/v1/models"))
    spoof = {"X-Forwarded-For": "10.1.2.3"}
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as untrusted,
        untrusted.get(url, headers=spoof) as resp,
    ):
        assert resp.status == 403
    # The same header from the trusted proxy is believed; the client it names is allowed.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.1", 0))) as proxy:
        async with proxy.get(url, headers=spoof) as resp:
            assert resp.status == 200
        # A client prepending a fake hop through the proxy: the proxy appends the real one, which wins.
        async with proxy.get(url, headers={"X-Forwarded-For": "10.1.2.3, 192.0.2.7"}) as resp:
            assert resp.status == 403


async def test_ipv4_mapped_peer_on_dual_stack_listener(tmp_path: Path, aiohttp_server: ServerFactory) -> None:
    state = make_state(tmp_path, XINFERENCE_ALLOWED_IPS="127.0.0.1")
    try:
        server = await aiohttp_server(make_api_app(state), host="::")
    except OSError as exc:  # pragma: no cover - only on hosts without IPv6
        pytest.skip(f"no IPv6 on this host: {exc}")
    port = server.port
    async with aiohttp.ClientSession() as session:
        # Through "::" the IPv4 client is seen as ::ffff:127.0.0.1, which must match the IPv4 rule.
        async with session.get(f"http://127.0.0.1:{port}/v1/models") as resp:
            assert resp.status == 200
        async with session.get(f"http://[::1]:{port}/v1/models") as resp:
            assert resp.status == 403


def test_client_ip_rules() -> None:
    net = ipaddress.ip_network
    policy = SecurityPolicy(
        allowed_ips=(net("10.0.0.0/8"), net("2001:db8::/32")),
        trusted_proxies=(net("192.168.0.1/32"), net("192.168.0.2/32")),
    )
    assert normalize_ip("::ffff:10.0.0.5") == ipaddress.ip_address("10.0.0.5")
    assert normalize_ip("[2001:db8::1]") == ipaddress.ip_address("2001:db8::1")
    assert normalize_ip("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    assert normalize_ip("not-an-ip") is None
    ip = ipaddress.ip_address
    assert policy.client_ip("10.0.0.1", ["2001:db8::9"]) == ip("10.0.0.1")  # untrusted peer: header ignored
    assert policy.client_ip("192.168.0.1", ["1.1.1.1, 10.0.0.7"]) == ip("10.0.0.7")
    assert policy.client_ip("192.168.0.1", ["10.0.0.7, 192.168.0.2"]) == ip("10.0.0.7")  # two proxies deep
    assert policy.client_ip("192.168.0.1", ["10.0.0.7", "192.168.0.2"]) == ip("10.0.0.7")  # repeated header
    assert policy.client_ip("192.168.0.1", ["garbage"]) is None
    assert policy.client_ip("192.168.0.1", []) == ip("192.168.0.1")
    assert policy.ip_allowed(ip("2001:db8::5")) and policy.ip_allowed(ip("10.255.0.1"))
    assert not policy.ip_allowed(ip("11.0.0.1")) and not policy.ip_allowed(None)
    mapped_rule = SecurityPolicy.from_settings(
        type(
            "S",
            (),
            {
                "allowed_ips": (net("::ffff:10.0.0.0/104"),),
                "trusted_proxies": (),
                "api_keys": (),
                "metrics_api_keys": (),
                "admin_api_keys": (),
            },
        )()
    )
    assert mapped_rule.ip_allowed(ip("10.3.2.1"))


def test_required_scope_defaults_to_inference() -> None:
    assert required_scope("/health") is None
    assert required_scope("/v1/cluster/auth") is None
    assert required_scope("/metrics") is Scope.METRICS
    for path in ("/v1/models", "/metrics/", "/health/", "/", "/anything", "//metrics", "/controlx", "/v1/modelsx"):
        assert required_scope(path) is Scope.INFERENCE, path
    for path in ("/v1/models", "/v1/models/a", "/v1/model_registrations/LLM", "/v1/engines/a"):
        assert required_scope(path, "GET") is Scope.INFERENCE, path
        assert required_scope(path, "head") is Scope.INFERENCE, path
        for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"):
            assert required_scope(path, method) is Scope.ADMIN, (path, method)
    for path in ("/control", "/control/v1/models", "/v1/models/a/progress", "/v1/models/a/", "/v1/virtualenvs",
                 "/v1/cluster/info", "/v1/workers", "/v1/supervisor"):
        assert required_scope(path, "GET") is Scope.ADMIN, path


async def test_policy_follows_reloaded_settings(tmp_path: Path, aiohttp_client: ServerFactory) -> None:
    from xinfd.config import load_settings

    client = await aiohttp_client(make_api_app(make_state(tmp_path)))
    assert (await client.get("/v1/models")).status == 200
    state = client.app[STATE]  # type: ignore[index]
    state.settings = load_settings(env={"XINFERENCE_HOME": str(tmp_path), "XINFD_API_KEYS": FULL_KEY})
    assert (await client.get("/v1/models")).status == 401
    assert (await client.get("/v1/models", headers={"Authorization": f"Bearer {FULL_KEY}"})).status == 200
