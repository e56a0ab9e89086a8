"""The web console: static files served at ``/ui``, a client of the daemon's own HTTP API.

The console does nothing the API does not: every model, venv, GPU and log it shows comes from the control API
mounted at ``/control`` (``xinfd.api.control.make_remote_control_app``) and the OpenAI routes, called by the
browser with the admin key the operator types in (kept in the tab's sessionStorage, sent as ``Authorization:
Bearer``). So the files here are public (``xinfd.api.security`` lets ``/ui`` through without a key, after the
allowed-IP check) and carry no data; a page without the key can fetch them and nothing else.

The files ship as package data (``xinfd/data/ui``, read from beside the package) and are served from a
fixed list, so no request path ever becomes a file name. Each answer carries a Content-Security-Policy that
allows only these files as script and style (no inline script, no eval) and connections to this origin only.
``XINFD_UI=0`` (setting ``ui``) leaves the routes out: ``/ui`` is then a 404 like any unknown path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aiohttp import web

UI_PREFIX: Final = "/ui"
# name -> content type; the only files served (index.html at /ui/).
UI_FILES: Final = {
    "index.html": "text/html",
    "console.js": "text/javascript",
    "console.css": "text/css",
}
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
_FILES_KEY: Final = web.AppKey("ui_files", dict)


def ui_file(name: str) -> bytes:
    """One file of the console, as installed (``xinfd/data/ui``)."""
    return (Path(__file__).resolve().parents[1] / "data" / "ui" / name).read_bytes()


def add_ui_routes(app: web.Application) -> None:
    """Add ``GET /ui``, ``/ui/`` and ``/ui/{file}``; the caller leaves this out when the setting ``ui`` is off.

    The files are read once here, so a broken install fails at start-up, not at the first page view.
    """
    app[_FILES_KEY] = {name: ui_file(name) for name in UI_FILES}
    app.router.add_get(UI_PREFIX, _redirect)
    app.router.add_get(UI_PREFIX + "/", _serve)
    app.router.add_get(UI_PREFIX + "/{name}", _serve)


async def _redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(UI_PREFIX + "/", headers=SECURITY_HEADERS)


async def _serve(request: web.Request) -> web.Response:
    name = request.match_info.get("name", "index.html")
    if name not in UI_FILES:
        raise web.HTTPNotFound(text=f"no console file {name!r}", headers=SECURITY_HEADERS)
    return web.Response(
        body=request.app[_FILES_KEY][name],
        content_type=UI_FILES[name],
        charset="utf-8",
        headers=SECURITY_HEADERS,
    )
