"""The desired state: which models should run, with their launch options and uids, across restarts.

Written to ``$XINFERENCE_HOME/state.json`` on every launch, scale and terminate, and read when the
daemon starts, so ``systemctl restart`` (or a crash) brings the models back as they were. It records what the
operator asked for, not what happens to be running: a replica in BACKOFF is still wanted, and a daemon
shutdown does not empty the file.

Writes go through ``xinfd.atomic.write_atomic`` (temp file in the same directory, fsync, ``os.replace``,
fsync of the directory): a crash mid-write leaves the old file or the new one, never half of one. An
unreadable file is moved aside (``state.json.corrupt``) and the daemon starts empty rather than refusing to
start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xinfd.atomic import PRIVATE, write_atomic

log = logging.getLogger(__name__)

STATE_FILE_NAME = "state.json"
VERSION = 1


class DesiredState:
    """The state file of one daemon home; entries are launch-request bodies with a fixed ``model_uid``."""

    def __init__(self, home: Path) -> None:
        self.path = home / STATE_FILE_NAME

    def load(self) -> list[dict[str, Any]]:
        """The models to restore, in launch order; [] when there is no file or it cannot be read."""
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.error("cannot read desired state %s: %s; starting with no models", self.path, exc)
            return []
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != VERSION:
                version = data.get("version") if isinstance(data, dict) else "?"
                raise ValueError(f"unsupported format (version {version})")
            models = data["models"]
            if not isinstance(models, list) or not all(
                isinstance(m, dict) and "model_uid" in m for m in models
            ):
                raise ValueError("'models' must be a list of launch requests with a model_uid")
        except (ValueError, KeyError) as exc:
            aside = self.path.with_name(STATE_FILE_NAME + ".corrupt")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            log.error(
                "desired state %s is unreadable (%s); moved to %s, starting with no models",
                self.path,
                exc,
                aside,
            )
            return []
        return list(models)

    def save(self, models: Sequence[Mapping[str, Any]]) -> None:
        """Replace the file atomically with ``models`` (launch-request bodies)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"version": VERSION, "models": list(models)}, indent=2, sort_keys=True)
        write_atomic(self.path, payload + "\n", mode=PRIVATE)
