"""GPU inventory: NVML when a driver is present, or the devices declared in the config.

Declared devices (``[[gpus]]`` in xinfd.toml) take precedence: they describe hosts without NVML and make the
placement logic testable on machines without a GPU. NVML is imported lazily so the daemon starts without
``nvidia-ml-py`` installed; no GPU at all is a normal case (CPU engines).
"""

from __future__ import annotations

import logging
import os
import platform as _platform
import sys
from collections.abc import Mapping, Sequence

from xinfd.types import GpuInfo, Platform

log = logging.getLogger(__name__)


def visible_indices(env: Mapping[str, str]) -> set[int] | None:
    """The physical indices allowed by the daemon's own ``CUDA_VISIBLE_DEVICES`` (None: no restriction)."""
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    found: set[int] = set()
    for part in raw.split(","):
        part = part.strip()
        if part.isdigit():
            found.add(int(part))
    return found


def nvml_inventory(env: Mapping[str, str]) -> tuple[tuple[GpuInfo, ...], bool]:
    """Read the GPUs through NVML; returns (gpus, nvml_available). Never raises."""
    try:
        import pynvml  # type: ignore[import-not-found,unused-ignore]  # optional: nvidia-ml-py
    except ImportError:
        return (), False
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # no driver: a normal CPU-only host
        log.debug("NVML not available: %s", exc)
        return (), False
    try:
        allowed = visible_indices(env)
        gpus: list[GpuInfo] = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            if allowed is not None and index not in allowed:
                continue
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode()
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(GpuInfo(index=index, name=str(name), memory_mb=int(memory.total) // (1024 * 1024)))
        return tuple(gpus), True
    finally:
        pynvml.nvmlShutdown()


def detect_platform(
    declared: Sequence[GpuInfo], *, venv_enabled: bool, env: Mapping[str, str] | None = None
) -> Platform:
    """Host facts for availability checks: declared GPUs if any, else NVML's."""
    env = os.environ if env is None else env
    if declared:
        gpus, nvml = tuple(declared), False
    else:
        gpus, nvml = nvml_inventory(env)
    return Platform(
        system=_platform.system(),
        machine=_platform.machine(),
        python_version=".".join(map(str, sys.version_info[:3])),
        gpus=gpus,
        nvml_available=nvml,
        venv_enabled=venv_enabled,
    )
