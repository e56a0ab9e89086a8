"""The daemon's process loads asyncio and aiohttp without TLS (``xinfd.without_tls``), and what does need TLS
there still has it: ``ssl`` imports afterwards, and an ``https://`` package-index probe answers."""

from __future__ import annotations

import http.server
import os
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import xinfd.without_tls


def run(code: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_the_daemon_loads_asyncio_and_aiohttp_without_tls() -> None:
    out = run(
        "import sys, xinfd.daemon, asyncio.base_events as loop, aiohttp.connector as connector\n"
        "print(xinfd.without_tls.LOADED_WITHOUT_TLS, loop.ssl is None, connector.ssl is None, 'ssl' in sys.modules)\n"
        "import ssl\n"  # later imports of ssl work: hub clients and urllib import it when they need it
        "print(ssl.create_default_context().verify_mode == ssl.CERT_REQUIRED)\n"
        "import http.client, urllib.request\n"  # aiohttp imported them without TLS: imported again, with it
        "print(hasattr(http.client, 'HTTPSConnection'), hasattr(urllib.request, 'HTTPSHandler'))"
    )
    assert out.splitlines() == ["True True True False", "True", "True True"]


def test_a_process_that_already_has_tls_keeps_it() -> None:
    assert "ssl" in sys.modules  # pytest's own process
    assert xinfd.without_tls._load_without_tls() is False
    assert run("import ssl, xinfd.daemon, asyncio.base_events as loop; print(loop.ssl is not None)") == "True"


@pytest.fixture
def tls_index(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTPS server with a self-signed certificate for 127.0.0.1: (its /simple/ URL, the cert)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's name
            body = b"<html><body></body></html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/simple/", cert
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_an_https_index_probe_answers_from_the_daemons_process(tls_index: tuple[str, Path]) -> None:
    url, cert = tls_index
    probe = ("import xinfd.daemon\nimport asyncio\n"
             "from xinfd.venvs.reach import unreachable\n"
             "assert xinfd.without_tls.LOADED_WITHOUT_TLS\n"
             f"print(asyncio.run(unreachable({url!r}, timeout=10)))")
    assert run(probe, {"SSL_CERT_FILE": str(cert)}) == "None"  # trusted: it answered
    refused = run(probe)  # the system's CAs do not know the test's certificate: TLS ran and refused it
    assert "CERTIFICATE_VERIFY_FAILED" in refused or "certificate verify failed" in refused
