"""pip's effective configuration, translated for uv (``inherit_pip_config``, default true).

uv does not read ``pip.conf``. Behind a mirror, or with a local wheel folder (this machine's CPU torch), a
venv built without pip's settings installs the wrong thing or nothing. We ask pip itself (``pip config list``:
files and ``PIP_*`` variables, in pip's own precedence), once per daemon, and fall back to the ``PIP_*``
variables when no pip is available (a uv-made daemon venv has none).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence

from xinfd.childproc import spawn_child
from xinfd.venvs.spec import IndexOptions

log = logging.getLogger(__name__)

_KEYS = {"index-url", "extra-index-url", "find-links", "trusted-host", "constraint"}
# Later sections win (pip: a command's section over [global], environment variables over files).
_SECTION_ORDER = {"global": 0, "install": 1, ":env:": 2}


def parse_config_list(text: str) -> dict[str, str]:
    """``section.key='value'`` lines of ``pip config list`` -> effective ``key -> value``."""
    ranked: dict[str, tuple[int, str]] = {}
    for line in text.splitlines():
        name, sep, raw = line.partition("=")
        section, dot, key = name.strip().rpartition(".")
        if not sep or not dot or key not in _KEYS or section not in _SECTION_ORDER:
            continue
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip().strip("'\"")
        rank = _SECTION_ORDER[section]
        if key not in ranked or ranked[key][0] <= rank:
            ranked[key] = (rank, str(value))
    return {k: v for k, (_, v) in ranked.items()}


def from_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The same keys from ``PIP_*`` variables (``PIP_EXTRA_INDEX_URL`` -> ``extra-index-url``)."""
    out = {}
    for key in _KEYS:
        value = env.get("PIP_" + key.upper().replace("-", "_"))
        if value:
            out[key] = value
    return out


def to_options(values: Mapping[str, str]) -> IndexOptions:
    """pip's whitespace-separated lists become one uv argument each."""

    def split(key: str) -> tuple[str, ...]:
        return tuple(values.get(key, "").split())

    index = split("index-url")
    return IndexOptions(
        index_url=index[0] if index else None,
        extra_index_urls=split("extra-index-url"),
        find_links=split("find-links"),
        trusted_hosts=split("trusted-host"),
        constraints=split("constraint"),
    )


def _pip_command() -> Sequence[str] | None:
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    found = shutil.which("pip3") or shutil.which("pip")
    return [found] if found else None


class PipConfig:
    """Reads pip's configuration once (about 0.3 s: only cold builds pay it) and caches the answer."""

    def __init__(self, command: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> None:
        self._command = command
        self._env = env
        self._options: IndexOptions | None = None

    async def options(self) -> IndexOptions:
        if self._options is None:
            self._options = to_options(await self._read())
        return self._options

    async def _read(self) -> dict[str, str]:
        env = dict(os.environ if self._env is None else self._env)
        command = self._command or _pip_command()
        if command is None:
            log.info("no pip found; inheriting only PIP_* variables for model venvs")
            return from_environment(env)
        try:
            proc = await spawn_child(
                *command, "config", "list", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL, env={**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            )
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
            except (asyncio.CancelledError, TimeoutError):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # a hung pip must not outlive the question
                await proc.wait()
                raise
        except (OSError, TimeoutError) as exc:
            log.warning("pip config list failed (%s); inheriting only PIP_* variables", exc)
            return from_environment(env)
        return {**from_environment(env), **parse_config_list(out.decode(errors="replace"))}
