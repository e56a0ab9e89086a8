"""The web console's routes (``xinfd.api.ui``): its files are public but carry no data, every answer carries
the Content-Security-Policy, ``XINFD_UI=0`` removes them, and the data the page shows stays behind the admin
key and the allowed-IP rule."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.unit.api.test_front_end import make_state
from xinfd.api.openai import make_api_app
from xinfd.api.security import Scope, required_scope
from xinfd.api.ui import CONTENT_SECURITY_POLICY, UI_FILES, ui_file

ADMIN = "sk-ui-admin"
DATA = Path(__file__).resolve().parents[3] / "xinfd" / "data" / "ui"


async def test_files_are_served_with_the_policy_and_no_key(tmp_path: Path, aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_api_app(make_state(tmp_path, XINFD_ADMIN_API_KEYS=ADMIN,
                                                          XINFD_API_KEYS="sk-inference")))
    resp = await client.get("/ui", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/ui/"
    for path, name in (("/ui/", "index.html"), ("/ui/console.js", "console.js"), ("/ui/console.css", "console.css")):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert resp.headers["Content-Type"].startswith(UI_FILES[name])
        assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert await resp.read() == (DATA / name).read_bytes()
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY and "'unsafe-eval'" not in CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "connect-src 'self'" in CONTENT_SECURITY_POLICY
    # Only the listed files: nothing else under /ui, and no path turns into a file name.
    for path in ("/ui/other.js", "/ui/..%2f..%2fpyproject.toml", "/ui/index.html/x"):
        assert (await client.get(path)).status == 404, path
    # The data stays behind the key: the page's own calls without it are refused.
    assert (await client.get("/control/v1/models")).status == 401
    assert (await client.get("/control/v1/models", headers={"Authorization": "Bearer sk-inference"})).status == 403
    resp = await client.get("/control/v1/status", headers={"Authorization": f"Bearer {ADMIN}"})
    assert resp.status == 200 and "enable_virtual_env" in await resp.json()


async def test_ui_off(tmp_path: Path, aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_api_app(make_state(tmp_path, XINFD_UI="0")))
    for path in ("/ui", "/ui/", "/ui/console.js"):
        assert (await client.get(path)).status == 404, path


async def test_allowed_ips_apply_to_the_console(tmp_path: Path, aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_api_app(make_state(tmp_path, XINFERENCE_ALLOWED_IPS="10.9.9.9")))
    assert (await client.get("/ui/")).status == 403


def test_scope_of_the_console_paths() -> None:
    assert required_scope("/ui") is None and required_scope("/ui/console.js", "HEAD") is None
    assert required_scope("/ui/x", "POST") is Scope.INFERENCE  # only reading the files is open
    assert required_scope("/uix") is Scope.INFERENCE


def test_the_page_has_no_inline_script_and_never_parses_data_as_html() -> None:
    html = ui_file("index.html").decode()
    js = ui_file("console.js").decode()
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", html, flags=re.S)
    assert scripts == [""] and 'type="module" src="console.js"' in html
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handler"
    assert "style=" not in html
    for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert banned not in js, banned
    assert "sessionStorage" in js and "localStorage" not in js
