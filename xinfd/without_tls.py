"""Imported first by ``xinfd.daemon``: asyncio and aiohttp load without TLS in the daemon's process.

Why: aiohttp builds two TLS client contexts when it is imported (one loads the system's CA bundle), and with
``ssl`` and OpenSSL's libraries that is 3.7 MiB of an idle daemon that never uses them (``benchmarks/startup.py``:
42.6 MiB with them). The daemon speaks plain HTTP only: its API listens on TCP behind the balancer or the
ingress, where TLS terminates (``contrib/``), its control API on a Unix socket, and it reaches replicas on
loopback or Unix sockets. What does leave the host over HTTPS runs in threads through libraries that import
``ssl`` themselves when they first need it, which still works afterwards: hub downloads (``xinfd.downloads``)
and the package-index probe of a venv build (``xinfd.venvs.reach``). Only asyncio's and aiohttp's own TLS is
off in this process: an ``https://`` request through an aiohttp client session here fails with aiohttp's
"SSL is not supported" error, which no daemon code path makes. Replicas, fork servers and ``xinfctl`` are other
processes and keep TLS (a replica fetches ``image_url`` over HTTPS with aiohttp).

Nothing happens when ``ssl`` or asyncio is already imported (the daemon imported by a test, or by a program
that embeds it): they keep TLS.
"""

from __future__ import annotations

import contextlib
import sys

# Standard-library modules that decide at import whether they can do TLS, and that aiohttp imports: imported
# while ``ssl`` was hidden, they are dropped from ``sys.modules`` afterwards, so that the next ``import`` (urllib's
# HTTPS for the index probe, ``http.client.HTTPSConnection``) builds them again, with TLS. aiohttp keeps the
# functions it took from them (``getproxies``), which need no TLS.
_RELOADED_WITH_TLS = ("urllib.request", "http.client")


def _load_without_tls() -> bool:
    """Import asyncio and aiohttp (with ``aiohttp.web``) while ``import ssl`` fails; True if it was done."""
    if "ssl" in sys.modules or "asyncio" in sys.modules or "aiohttp" in sys.modules:
        return False
    before = set(sys.modules)
    sys.modules["ssl"] = None  # type: ignore[assignment]  # Python's documented way to make an import fail
    try:
        import asyncio  # noqa: F401

        import aiohttp.web  # noqa: F401
    finally:
        del sys.modules["ssl"]
        for name in _RELOADED_WITH_TLS:
            if name not in before and sys.modules.pop(name, None) is not None:
                package, _, child = name.rpartition(".")
                with contextlib.suppress(AttributeError):
                    delattr(sys.modules[package], child)
    return True


LOADED_WITHOUT_TLS = _load_without_tls()
