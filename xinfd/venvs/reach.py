"""Which package indexes a build may use, decided before uv starts (pip's behaviour, uv's speed).

pip asks every index it has and warns about one it cannot reach ("Could not fetch URL ... skipping"); uv
stops a whole build at the first unreachable index, and with ``--index-strategy unsafe-best-match`` (what
``inherit_pip_config`` uses, ``IndexOptions.pip_parity``) it asks every index, so one dead mirror would fail
every launch. So each location is probed first, all at once, each with a short timeout:

* an HTTP(S) index is reachable when it *answers* an HTTP request (any status): a host that accepts a
  connection and never replies is as dead as one that refuses it;
* a ``file:`` location (or a plain path) when it exists.

An unreachable extra index or ``find-links`` location is dropped with a warning naming its host (the launch
events and the daemon log show it), and the build goes on with the others. The primary index (``index_url``,
or PyPI when none is set) is the one uv falls back to for everything: unreachable, the build fails at once,
naming the host. Probing costs one round trip per index, concurrently: only cold builds pay it. Each probe is a plain
``urllib`` request in a thread of its own (proxies from the environment, as uv reads them; redirects followed):
the daemon's event loop has no TLS (``xinfd.without_tls``), and ``urllib`` imports ``ssl`` when an ``https://``
index first needs it.

The check runs *alongside* the build, not before it: the first uv call that needs an index starts at once
with every location and is redone only when the check drops one (``first_index_use``). A build whose indexes
all answer, the usual case, never waits for the probes.

A stall *during* the build (an index that answered the probe, then stops) is bounded by uv's own
``UV_HTTP_TIMEOUT`` (``virtual_env_stall_timeout``; ``xinfd.venvs.builder.Uv``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from xinfd.events import Publish, VenvProgress
from xinfd.venvs.spec import IndexOptions, VenvError

log = logging.getLogger(__name__)

DEFAULT_INDEX = "https://pypi.org/simple"


def where(url: str) -> str:
    """What a message names: ``host:port`` for a URL, the path for a file location."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.hostname}:{port}"
    return parts.path if parts.scheme == "file" else url


async def unreachable(url: str, *, timeout: float) -> str | None:
    """Why ``url`` cannot serve packages (``None``: it answered, or exists)."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[str | None] = loop.create_future()

        def settle(reason: str | None) -> None:
            if not answer.done():  # not given up on (wait_for cancels it at its timeout)
                answer.set_result(reason)

        def probe() -> None:
            reason = _http_unreachable(url, timeout)
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits for the answer
                loop.call_soon_threadsafe(settle, reason)

        # A daemon thread, not the loop's executor: a probe stuck in a silent host must not hold up the
        # daemon's exit; its socket timeout ends it soon after.
        threading.Thread(target=probe, name="xinfd-index-probe", daemon=True).start()
        try:
            return await asyncio.wait_for(answer, timeout)
        except TimeoutError:
            return _no_answer(timeout)
    if parts.scheme == "file" or not parts.scheme:
        return None if os.path.exists(parts.path if parts.scheme == "file" else url) else "does not exist"
    return None  # another scheme (git+, ...): uv's business


def _no_answer(timeout: float) -> str:
    """The reason for a host that accepted nothing, or answered nothing, in time."""
    return f"no answer within {timeout:g} s"


def _http_unreachable(url: str, timeout: float) -> str | None:
    """One request to ``url``: None when the host answered, whatever its status; else why not."""
    import http.client  # imported here: only a venv build's probe pays for urllib (and ssl, for https)
    import urllib.error
    import urllib.request

    try:
        request = urllib.request.Request(url, headers={"User-Agent": "xinfd (index probe)"})
        with urllib.request.urlopen(request, timeout=timeout) as response:  # the index's URL
            response.read(1)  # an answer: the host is serving
        return None
    except urllib.error.HTTPError:
        return None  # an answer too, whatever its status (401, 404...): the host is serving
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return _no_answer(timeout)
        return (getattr(reason, "strerror", None) or str(reason)) if isinstance(reason, OSError) else str(reason)
    except TimeoutError:
        return _no_answer(timeout)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return str(exc) or type(exc).__name__


async def usable_indexes(index: IndexOptions, publish: Publish, *, timeout: float = 10.0) -> IndexOptions:
    """``index`` without its unreachable extra locations; raises ``VenvError`` naming the host when the primary
    index is unreachable. See the module docstring for the rules."""
    primary = index.index_url or DEFAULT_INDEX
    extras = [*index.extra_index_urls, *index.find_links]
    urls = [primary, *extras]
    reasons = await asyncio.gather(*(unreachable(u, timeout=timeout) for u in urls))
    if reasons[0] is not None:
        raise VenvError(f"package index {where(primary)} is unreachable ({reasons[0]}); check the model's "
                        f"virtualenv index_url or pip's config (pip config list)")
    dead = {url for url, reason in zip(extras, reasons[1:], strict=True) if reason is not None}
    for url, reason in zip(extras, reasons[1:], strict=True):
        if reason is not None:
            message = f"skipping package location {where(url)} ({url}): {reason}"
            log.warning("venv build: %s", message)
            await publish(VenvProgress(message=f"warning: {message}"))
    if not dead:
        return index
    return dataclasses.replace(
        index,
        extra_index_urls=tuple(u for u in index.extra_index_urls if u not in dead),
        find_links=tuple(u for u in index.find_links if u not in dead),
    )


def index_args(index: IndexOptions) -> list[str]:
    """uv's index arguments and constraints for ``index``."""
    return [*index.uv_args(), *(a for c in index.constraints for a in ("--constraint", c))]


def waiting_hosts(index: IndexOptions) -> str:
    """The locations a silent uv may be waiting on, for the progress line."""
    urls = (index.index_url or DEFAULT_INDEX, *index.extra_index_urls, *index.find_links)
    return ", ".join(dict.fromkeys(where(u) for u in urls))


async def first_index_use(checking: asyncio.Future[IndexOptions] | None, assumed: IndexOptions,
                           run: Callable[[IndexOptions], Awaitable[str]]) -> IndexOptions:
    """Run the build's first uv call that needs an index while the index check may still be running; returns
    the index options the rest of the build uses.

    The call starts with ``assumed`` (every configured location). If the check finishes first and keeps them
    all, the call goes on; if it drops a location (or fails: the primary index is down), the call is cancelled,
    which kills uv, and redone with the check's answer (or the check's error is raised). If the call fails
    first, the check's answer decides whether that was a dead location (redo without it) or uv's own error. If
    it succeeds first, every location it needed answered: the check is not waited for."""
    if checking is None:
        await run(assumed)
        return assumed
    attempt = asyncio.ensure_future(run(assumed))
    racing: set[asyncio.Future[Any]] = {attempt, checking}
    try:
        await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        attempt.cancel()
        with contextlib.suppress(BaseException):
            await attempt
        raise
    if attempt.done() and attempt.exception() is None:
        return assumed
    if not attempt.done():
        if checking.exception() is None and checking.result() == assumed:
            await attempt
            return assumed
        attempt.cancel()
        with contextlib.suppress(BaseException):
            await attempt
    checked = await checking  # raises the check's error (the primary index is unreachable)
    if checked == assumed:
        await attempt  # uv's own failure: re-raised as it was
    await run(checked)
    return checked
