"""Logging set-up: one line per event; no timestamps under journald, which stamps lines itself."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping


def configure_logging(level: str, env: Mapping[str, str] | None = None) -> None:
    env = os.environ if env is None else env
    if env.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log is one line per request: useful at DEBUG, noise at INFO.
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
