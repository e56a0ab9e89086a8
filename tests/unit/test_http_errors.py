"""One error envelope and middleware (``xinfd.http_errors``) for the front end, the control socket and the
worker; JSON the parser accepts but cannot hold (huge integers, deep nesting) is a 400 on all three."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from xinfd_echo.model import EchoModel

from tests.unit.api.test_front_end import make_state
from tests.unit.worker.conftest import build_app
from xinfd.api.control import make_control_app
from xinfd.api.openai import make_api_app
from xinfd.errors import InvalidRequestError, LaunchError, ModelNotReadyError, UnknownModelError
from xinfd.http_errors import make_error_middleware, parse_json, parse_json_object

ClientFactory = Callable[[web.Application], Any]
JSON = {"Content-Type": "application/json"}

HUGE_INT = b'{"model": "m", "max_tokens": ' + b"1" * 100_000 + b"}"
DEEP = b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


async def _envelope(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


# -- the parser ---------------------------------------------------------------------------------------------


def test_huge_integer_is_a_clear_invalid_request() -> None:
    with pytest.raises(InvalidRequestError, match=rf"more than {sys.get_int_max_str_digits()} digits") as info:
        parse_json(HUGE_INT)
    assert "set_int_max_str_digits" not in info.value.message  # Python's hint is not for API clients


def test_deep_nesting_is_a_clear_invalid_request() -> None:
    with pytest.raises(InvalidRequestError, match="nested too deeply"):
        parse_json(DEEP)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [(b"{", "not valid JSON"), (b"\xff\xfe", "not valid JSON"), (b"", "not valid JSON"),
     (b"[1]", "not an array"), (b'"x"', "not a string"), (b"null", "not null"), (b"1", "not a number"),
     (b"true", "not a boolean")],
)
def test_parse_json_object_refusals(raw: bytes, fragment: str) -> None:
    with pytest.raises(InvalidRequestError, match=fragment) as info:
        parse_json_object(raw)
    assert info.value.param is None and info.value.status == 400


def test_parse_json_keeps_values() -> None:
    assert parse_json_object(b'{"a": [1, 2.5, null, "\\u00e9"]}') == {"a": [1, 2.5, None, "\u00e9"]}
    assert parse_json(b"[1]") == [1]


# -- the middleware -----------------------------------------------------------------------------------------


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError(f"secret state in {Path(__file__)}")


async def _typed(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    if kind == "loading":
        raise ModelNotReadyError("still loading", retry_after=7)
    if kind == "launch":
        raise LaunchError("replica exited with status 1")
    raise UnknownModelError("no model 'x'", param="model")


async def test_middleware_maps_every_failure(
    aiohttp_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = web.Application(middlewares=[make_error_middleware(internal_message="internal error (see the log)")])
    app.router.add_get("/boom", _boom)
    app.router.add_get("/typed/{kind}", _typed)
    client = await aiohttp_client(app)
    with caplog.at_level(logging.ERROR, logger="xinfd.http_errors"):
        resp = await client.get("/boom")
        error = await _envelope(resp, 500)
    assert error == {"message": "internal error (see the log)", "type": "server_error", "param": None,
                     "code": "internal_error"}
    assert "secret" not in await resp.text() and str(Path(__file__)) not in await resp.text()
    assert "Traceback" in caplog.text and "secret state" in caplog.text  # the log has it, the client not
    resp = await client.get("/typed/loading")
    assert (await _envelope(resp, 503))["code"] == "model_not_ready" and resp.headers["Retry-After"] == "7"
    error = await _envelope(await client.get("/typed/missing"), 404)
    assert (error["code"], error["param"], error["type"]) == ("model_not_found", "model", "invalid_request_error")
    assert (await _envelope(await client.get("/typed/launch"), 500))["code"] == "launch_failed"
    error = await _envelope(await client.get("/nothing"), 404)
    assert error == {"message": "no route for GET /nothing", "type": "invalid_request_error", "param": None,
                     "code": "not_found"}
    resp = await client.post("/boom")
    assert (await _envelope(resp, 405))["code"] == "method_not_allowed" and resp.headers["Allow"] == "GET,HEAD"


async def test_daemon_and_worker_answer_the_same_envelope(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    daemon = await aiohttp_client(make_api_app(make_state(tmp_path)))
    worker = await aiohttp_client(build_app(EchoModel()))
    for client in (daemon, worker):
        assert await _envelope(await client.get("/v1/nothing"), 404) == {
            "message": "no route for GET /v1/nothing", "type": "invalid_request_error", "param": None,
            "code": "not_found"}
        error = await _envelope(await client.put("/v1/chat/completions"), 405)
        assert error["message"] == "method PUT not allowed on /v1/chat/completions"
        error = await _envelope(await client.post("/v1/chat/completions", data=b"[1]", headers=JSON), 400)
        assert error["message"] == "request body must be a JSON object, not an array"


def test_the_shared_module_imports_neither_the_api_nor_the_worker() -> None:
    code = ("import sys, xinfd.http_errors; "
            "bad = [m for m in sys.modules if m.startswith(('xinfd.api', 'xinfd.worker'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- JSON limits through every server -----------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "fragment"), [(HUGE_INT, "digits"), (DEEP, "nested too deeply")])
async def test_front_end_refuses_unholdable_json(
    tmp_path: Path, aiohttp_client: ClientFactory, raw: bytes, fragment: str
) -> None:
    client = await aiohttp_client(make_api_app(make_state(tmp_path)))
    error = await _envelope(await client.post("/v1/chat/completions", data=raw, headers=JSON), 400)
    assert error["code"] == "invalid_request" and fragment in error["message"]


@pytest.mark.parametrize(("raw", "fragment"), [(HUGE_INT, "digits"), (DEEP, "nested too deeply")])
@pytest.mark.parametrize("path", ["/v1/models", "/v1/registrations", "/v1/models/m/scale"])
async def test_control_socket_refuses_unholdable_json(
    tmp_path: Path, aiohttp_client: ClientFactory, raw: bytes, fragment: str, path: str
) -> None:
    client = await aiohttp_client(make_control_app(make_state(tmp_path)))
    error = await _envelope(await client.post(path, data=raw, headers=JSON), 400)
    assert error["code"] == "invalid_request" and fragment in error["message"]


@pytest.mark.parametrize(("raw", "fragment"), [(HUGE_INT, "digits"), (DEEP, "nested too deeply")])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_worker_refuses_unholdable_json(
    aiohttp_client: ClientFactory, raw: bytes, fragment: str, path: str
) -> None:
    client = await aiohttp_client(build_app(EchoModel()))
    error = await _envelope(await client.post(path, data=raw, headers=JSON), 400)
    assert error["code"] == "invalid_request" and fragment in error["message"]
