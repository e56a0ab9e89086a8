"""The launch options of the echo engine (standard library only: the daemon imports this to check them).

Launch options (``xinfctl launch echo --option key=value``; values may arrive as strings) make echo useful for
fault tests: ``delay`` / ``prefill_delay`` slow it down, ``crash_after`` kills the process, ``fail_load``
fails the start, ``ignore_sigterm`` forces the daemon to escalate to SIGKILL, and ``fork_grandchild`` leaves a
child process that only a process-group kill removes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True, slots=True, kw_only=True)
class EchoOptions:
    """The launch options the echo engine understands, with their types checked."""

    delay: float = 0.0  # seconds between tokens
    prefill_delay: float = 0.0  # seconds before the first token
    crash_after: int | None = None  # os._exit(17) once this many requests have been served
    fail_load: str | None = None  # raise RuntimeError(fail_load) while loading
    ignore_sigterm: bool = False
    fork_grandchild: bool = False  # spawn `sleep 3600` at load, in the replica's process group

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> EchoOptions:
        """Coerce CLI-style values (``"0.5"``, ``"true"``); other engines' options are ignored.

        :raises ValueError: naming the option whose value does not fit.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, value in options.items():
            if name not in known or value is None:
                continue
            if name in ("delay", "prefill_delay"):
                values[name] = _as_seconds(name, value)
            elif name == "crash_after":
                values[name] = _as_positive_int(name, value)
            elif name == "fail_load":
                values[name] = str(value)
            else:
                values[name] = _as_bool(name, value)
        return cls(**values)


def _as_seconds(name: str, value: object) -> float:
    try:
        seconds = (
            float(value) if isinstance(value, int | float | str) and not isinstance(value, bool) else -1.0
        )
    except ValueError:
        seconds = -1.0
    if not seconds >= 0.0 or seconds == float("inf"):  # also rejects NaN
        raise ValueError(f"echo option {name!r} must be a non-negative number of seconds, got {value!r}")
    return seconds


def _as_positive_int(name: str, value: object) -> int:
    number = 0
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    if number < 1:
        raise ValueError(f"echo option {name!r} must be a positive integer, got {value!r}")
    return number


def _as_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"echo option {name!r} must be true or false, got {value!r}")
