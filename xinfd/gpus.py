"""GPU inventory: NVML when a driver is present, or the devices declared in the config, and the slot table.

Declared devices (``[[gpus]]`` in xinfd.toml, or ``XINFD_GPUS``) take precedence: they describe hosts without
NVML and make the placement logic testable on machines without a GPU. ``nvidia-ml-py`` is a dependency, but
without a driver ``nvmlInit`` fails: that is a normal CPU-only host, and the daemon goes on with no GPU and
keeps the reason (``Platform.nvml_error``) for ``xinfctl gpus`` and the engines' availability messages.

The module is over 400 lines because the slot table and the inventory it places on belong together; the CPU
thread budget the table also owns is decided in ``xinfd.cpus``.
"""

from __future__ import annotations

import logging
import os
import platform as _platform
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from xinfd.cpus import CpuBudget, CpuShare, cpu_budget, cpu_snapshot, split
from xinfd.errors import ImpossiblePlacementError, PlacementError
from xinfd.types import GpuInfo, Platform, replica_label

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


# NVML's error classes that mean "no driver", by name (pynvml defines them dynamically), in operators' words.
_NVML_REASONS = {
    "NVMLError_LibraryNotFound": "driver not found",
    "NVMLError_DriverNotLoaded": "driver not loaded",
    "NVMLError_NoPermission": "no permission to use the driver",
}


def nvml_failure(exc: BaseException) -> str:
    """``no NVML: <why>`` for an NVML exception: known classes in words, with the library's own message."""
    message = str(exc).strip() or type(exc).__name__
    reason = _NVML_REASONS.get(type(exc).__name__)
    return f"no NVML: {reason} ({message})" if reason else f"no NVML: {message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class NvmlInventory:
    """What NVML said: the GPUs it lists (``CUDA_VISIBLE_DEVICES`` applied), or why it could not say."""

    gpus: tuple[GpuInfo, ...] = ()
    error: str | None = None

    @property
    def available(self) -> bool:
        return self.error is None


# The library pynvml's nvmlInit opens on Linux (its name there; other systems go straight to pynvml).
NVML_LIBRARY = "libnvidia-ml.so.1"


def nvml_library_missing(library: str = NVML_LIBRARY) -> str | None:
    """Why NVML cannot work here, when the driver's library is not loadable (``None``: it is, or not Linux).
    Checked before ``import pynvml``: on a CPU-only host, the usual case for a CPU daemon, that import and its
    ctypes bindings cost 1.8 MiB of the idle daemon for nothing. The words are pynvml's own for this case."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        ctypes.CDLL(library)
    except OSError:
        return "no NVML: driver not found (NVML Shared Library Not Found)"
    return None


def nvml_inventory(env: Mapping[str, str]) -> NvmlInventory:
    """Read the GPUs through NVML. Never raises: a failure is returned as ``error``."""
    if (missing := nvml_library_missing()) is not None:
        log.info("%s; no GPU is used unless declared ([[gpus]] or XINFD_GPUS)", missing)
        return NvmlInventory(error=missing)
    try:
        import pynvml  # type: ignore[import-not-found,import-untyped,unused-ignore]  # pure Python, a dependency
    except ImportError as exc:  # installed without its dependencies (pip --no-deps)
        return NvmlInventory(error=f"no NVML: nvidia-ml-py is not installed ({exc})")
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # no driver: a normal CPU-only host
        reason = nvml_failure(exc)
        log.info("%s; no GPU is used unless declared ([[gpus]] or XINFD_GPUS)", reason)
        return NvmlInventory(error=reason)
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
        return NvmlInventory(gpus=tuple(gpus))
    except Exception as exc:  # a driver that answers init but fails a query: report it, do not stop the daemon
        reason = nvml_failure(exc)
        log.warning("%s", reason)
        return NvmlInventory(error=reason)
    finally:
        pynvml.nvmlShutdown()


def declared_source(source: str) -> str:
    """``Settings.sources["gpus"]`` ("file /x.toml", "env XINFD_GPUS") in the words ``xinfctl gpus`` shows."""
    kind, _, where = source.partition(" ")
    if kind == "file":
        return f"config file {where}"
    if kind == "env":
        return f"environment variable {where}"
    return source


def detect_platform(
    declared: Sequence[GpuInfo],
    *,
    venv_enabled: bool,
    env: Mapping[str, str] | None = None,
    declared_from: str = "config",
    nvml: Callable[[Mapping[str, str]], NvmlInventory] = nvml_inventory,
) -> Platform:
    """Host facts for availability checks: declared GPUs if any (``declared_from`` says where), else NVML's."""
    env = os.environ if env is None else env
    if declared:
        gpus, available, source, error = tuple(declared), False, declared_source(declared_from), None
    else:
        found = nvml(env)
        gpus, available, source, error = found.gpus, found.available, "NVML", found.error
    return Platform(
        system=_platform.system(),
        machine=_platform.machine(),
        python_version=".".join(map(str, sys.version_info[:3])),
        gpus=gpus,
        nvml_available=available,
        gpu_source=source,
        nvml_error=error,
        venv_enabled=venv_enabled,
    )


def describe_inventory(platform: Platform) -> str:
    """One line for ``xinfctl gpus`` / ``xinfctl engines``: how many GPUs, from where, or why none."""
    count = len(platform.gpus)
    if platform.gpu_source != "NVML":
        return f"{count} GPU(s) declared in the {platform.gpu_source}"
    if platform.nvml_error is not None:
        return f"no GPU: {platform.nvml_error}"
    if not count:
        return "no GPU found through NVML (none, or CUDA_VISIBLE_DEVICES of the daemon hides them)"
    return f"{count} GPU(s) found through NVML"


# ------------------------------------------------------------------------------------------------------------
# The slot table (spec model-launching.txt: Replica, Hybrid GPU Allocation, GPU Allocation Strategy).

IDLE_FIRST = "IDLE_FIRST_LAUNCH_STRATEGY"
PACK_FIRST = "PACK_FIRST_LAUNCH_STRATEGY"
NGpu = int | Literal["auto"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """Where one replica runs and why, in words an operator can check against ``xinfctl gpus``."""

    replica_index: int
    gpu_indices: tuple[int, ...]
    reason: str
    # A CPU replica's threads and cores (``xinfd.cpus``), set by ``SlotTable.reserve_all``; None on a GPU.
    cpu: CpuShare | None = None


@dataclass(frozen=True, slots=True)
class _Slot:
    model_uid: str
    placement: Placement

    @property
    def label(self) -> str:
        return replica_label(self.model_uid, self.placement.replica_index)

    @property
    def gpu_indices(self) -> tuple[int, ...]:
        return self.placement.gpu_indices


class SlotTable:
    """Which replica holds which GPU. Plans placements without side effects; ``reserve`` records them.

    The table is the one owner of placements: every reserved replica is recorded here, CPU-only ones too, and
    a model asks ``placements(uid)`` for its own instead of keeping a copy. It owns the cores the same way:
    the replicas without a GPU share ``cpus`` (the daemon's affinity mask) through ``xinfd.cpus.split``, or
    take ``cpu_threads_per_replica`` threads each when the operator set it (0: split).

    Load is the number of replicas holding a GPU: xinfd does not know what a model will allocate, but it
    knows who it put where, which is what "idle first" means in the spec. Free memory, when NVML reports it
    (``free_mb``), breaks ties between equally loaded GPUs, then the lower index wins.
    """

    def __init__(
        self,
        gpus: Sequence[GpuInfo],
        *,
        strategy: str = IDLE_FIRST,
        allow_multi_replica_per_gpu: bool = True,
        free_mb: Callable[[int], int | None] | None = None,
        cpus: Sequence[int] | None = None,
        cpu_threads_per_replica: int = 0,
    ) -> None:
        if strategy not in (IDLE_FIRST, PACK_FIRST):
            raise ValueError(f"unknown launch strategy {strategy!r}")
        self.gpus = tuple(sorted(gpus, key=lambda g: g.index))
        self.strategy = strategy
        self.allow_multi = allow_multi_replica_per_gpu
        self._free_mb = free_mb or (lambda index: None)
        self._slots: dict[tuple[str, int], _Slot] = {}
        # The daemon's cores cut to its cgroup's CPU quota (xinfd.cpus.cpu_budget); given ones are used as given.
        budget = cpu_budget() if cpus is None else CpuBudget(cores=tuple(sorted(cpus)), source="the caller's list")
        self.cpus, self.cpu_source = budget.cores, budget.source
        self.cpu_threads_per_replica = cpu_threads_per_replica

    # -- reading ---------------------------------------------------------------------------------------------

    def holders(self, index: int) -> list[str]:
        """Labels of the replicas holding GPU ``index``."""
        return [s.label for s in self._slots.values() if index in s.gpu_indices]

    def placements(self, model_uid: str) -> list[Placement]:
        """The reserved placements of ``model_uid``'s replicas, by replica index."""
        return sorted(
            (s.placement for s in self._slots.values() if s.model_uid == model_uid),
            key=lambda p: p.replica_index,
        )

    def _loads(self) -> dict[int, int]:
        loads = {g.index: 0 for g in self.gpus}
        for slot in self._slots.values():
            for index in slot.gpu_indices:
                loads[index] = loads.get(index, 0) + 1
        return loads

    def snapshot(self) -> list[dict[str, Any]]:
        """What ``xinfctl gpus`` shows: each GPU, who holds it, and why each placement was made."""
        rows = []
        for gpu in self.gpus:
            replicas = [
                {"label": s.label, "gpu_indices": list(s.gpu_indices), "reason": s.placement.reason}
                for s in self._slots.values()
                if gpu.index in s.gpu_indices
            ]
            rows.append(
                {
                    "index": gpu.index,
                    "name": gpu.name,
                    "memory_mb": gpu.memory_mb,
                    "free_mb": self._free_mb(gpu.index),
                    "replicas": replicas,
                }
            )
        return rows

    def cpu_snapshot(self) -> dict[str, Any]:
        """What ``xinfctl cpus`` shows: the daemon's cores and each CPU replica's threads, cores and reason."""
        shares = [
            (s.label, s.placement.cpu)
            for s in sorted(self._slots.values(), key=lambda s: (s.model_uid, s.placement.replica_index))
            if s.placement.cpu is not None
        ]
        return cpu_snapshot(self.cpus, shares, per_replica=self.cpu_threads_per_replica, source=self.cpu_source)

    # -- planning --------------------------------------------------------------------------------------------

    def plan(
        self, replica_indices: Sequence[int], *, n_gpu: NGpu = "auto", gpu_idx: Sequence[int] | None = None
    ) -> list[Placement]:
        """Placements for new replicas, or ``PlacementError`` with the reason; nothing is reserved.

        ``n_gpu`` is per replica: ``"auto"`` means one GPU each when the host has GPUs (the spec's examples:
        3 replicas on 2 GPUs -> 2 + 1) and none on a CPU-only host; ``0`` runs on the CPU. ``gpu_idx`` places
        every replica on exactly those GPUs.
        """
        known = [g.index for g in self.gpus]
        have = ", ".join(map(str, known)) or "none"
        if gpu_idx is not None:
            return self._plan_explicit(replica_indices, tuple(gpu_idx), n_gpu, have)
        per_replica = (1 if self.gpus else 0) if n_gpu == "auto" else n_gpu
        if per_replica < 0:
            raise ImpossiblePlacementError(f"n_gpu must be 'auto' or an integer >= 0, got {n_gpu!r}")
        if per_replica == 0:
            return [
                Placement(replica_index=i, gpu_indices=(), reason="no GPU requested (CPU)")
                for i in replica_indices
            ]
        if per_replica > len(self.gpus):
            raise ImpossiblePlacementError(
                f"each replica needs {per_replica} GPU(s) but this host has {len(self.gpus)} (GPUs: {have})"
            )
        loads = self._loads()
        placements = []
        for i in replica_indices:
            candidates = [g for g in known if self.allow_multi or loads[g] == 0]
            if len(candidates) < per_replica:
                busy = "; ".join(
                    f"GPU {g} held by {', '.join(self.holders(g)) or 'this launch'}"
                    for g in known
                    if loads[g]
                )
                raise PlacementError(
                    f"replica {i} needs {per_replica} idle GPU(s) and only {len(candidates)} "
                    f"{'is' if len(candidates) == 1 else 'are'} idle ({busy}); "
                    "XINFERENCE_ALLOW_MULTI_REPLICA_PER_GPU=0 forbids sharing a GPU"
                )
            chosen = tuple(sorted(sorted(candidates, key=lambda g: self._rank(g, loads))[:per_replica]))
            reason = self._reason(chosen, loads)
            for g in chosen:
                loads[g] += 1
            placements.append(Placement(replica_index=i, gpu_indices=chosen, reason=reason))
        return placements

    def _rank(self, index: int, loads: Mapping[int, int]) -> tuple[int, int, int, int]:
        free = self._free_mb(index)
        free_key = -free if free is not None else 0
        if self.strategy == PACK_FIRST:
            # GPUs already in use first (the least loaded of them), idle ones last: whole GPUs stay free for a
            # later launch that needs them idle (XINFERENCE_ALLOW_MULTI_REPLICA_PER_GPU=0, or a big model).
            return (0 if loads[index] else 1, loads[index], free_key, index)
        return (0, loads[index], free_key, index)

    def _reason(self, chosen: tuple[int, ...], loads: Mapping[int, int]) -> str:
        held = ", ".join(f"GPU {g}: {loads[g]} replica(s) before" for g in chosen)
        if self.strategy == PACK_FIRST:
            return f"pack first: fewest GPUs in use ({held})"
        return f"idle first: least-loaded GPU, ties to the lower index ({held})"

    def _plan_explicit(
        self, replica_indices: Sequence[int], gpu_idx: tuple[int, ...], n_gpu: NGpu, have: str
    ) -> list[Placement]:
        if not gpu_idx:
            raise ImpossiblePlacementError("gpu_idx must name at least one GPU")
        if len(set(gpu_idx)) != len(gpu_idx):
            raise ImpossiblePlacementError(f"gpu_idx names a GPU twice: {list(gpu_idx)}")
        missing = [g for g in gpu_idx if g not in {gpu.index for gpu in self.gpus}]
        if missing:
            raise ImpossiblePlacementError(
                f"GPU index {', '.join(map(str, missing))} does not exist (GPUs: {have})"
            )
        if n_gpu not in ("auto", len(gpu_idx)):
            raise ImpossiblePlacementError(
                f"n_gpu={n_gpu} does not match gpu_idx {list(gpu_idx)} ({len(gpu_idx)} GPUs)"
            )
        if not self.allow_multi:
            busy = [g for g in gpu_idx if self.holders(g)]
            if busy or len(replica_indices) > 1:
                why = (
                    f"GPU {busy[0]} is held by {', '.join(self.holders(busy[0]))}"
                    if busy
                    else f"{len(replica_indices)} replicas would share GPU(s) {list(gpu_idx)}"
                )
                raise PlacementError(f"{why}; XINFERENCE_ALLOW_MULTI_REPLICA_PER_GPU=0 forbids sharing a GPU")
        chosen = tuple(sorted(gpu_idx))
        return [
            Placement(replica_index=i, gpu_indices=chosen, reason=f"explicit gpu_idx {list(gpu_idx)}")
            for i in replica_indices
        ]

    # -- holding ---------------------------------------------------------------------------------------------

    def reserve(self, model_uid: str, placement: Placement) -> Placement:
        """Record a planned placement for replica ``placement.replica_index`` of ``model_uid``."""
        return self.reserve_all(model_uid, [placement])[0]

    def reserve_all(
        self, model_uid: str, placements: Sequence[Placement], *, cpu_threads: int | None = None
    ) -> list[Placement]:
        """Record the placements of one launch or scale-up; CPU ones get their ``CpuShare``, all split at once.

        ``cpu_threads`` is the launch's own count (``--cpu-threads`` or ``--env OMP_NUM_THREADS``); without it
        the daemon's ``cpu_threads_per_replica``, and without that an even split of the cores. Returns the
        placements as recorded (with their shares).
        """
        for placement in placements:
            key = (model_uid, placement.replica_index)
            if key in self._slots:
                raise ValueError(f"replica {replica_label(*key)} already holds a placement")
        on_cpu = [p for p in placements if not p.gpu_indices]
        held = [s.placement.cpu for s in self._slots.values() if s.placement.cpu is not None]
        if cpu_threads is not None:
            threads, why = cpu_threads, f"the launch asked for {cpu_threads} thread(s)"
        elif self.cpu_threads_per_replica:
            threads = self.cpu_threads_per_replica
            why = f"cpu_threads_per_replica = {threads}"
        else:
            threads, why = None, ""
        shares = dict(zip((p.replica_index for p in on_cpu), split(self.cpus, held, len(on_cpu),
                                                                     threads=threads, why=why), strict=True))
        recorded = []
        for placement in placements:
            if placement.replica_index in shares:
                placement = replace(placement, cpu=shares[placement.replica_index])
            self._slots[(model_uid, placement.replica_index)] = _Slot(model_uid, placement)
            recorded.append(placement)
        return recorded

    def release(self, model_uid: str, replica_index: int) -> None:
        """Free a replica's GPUs; call only once its whole process group is gone. Idempotent."""
        self._slots.pop((model_uid, replica_index), None)


def cuda_visible_devices(gpu_indices: Sequence[int]) -> str:
    """A replica's value: its GPUs only, or "" (no GPU) so a CPU replica cannot grab one by accident."""
    return ",".join(str(i) for i in gpu_indices)


def nvml_free_memory(index: int) -> int | None:
    """Free memory of GPU ``index`` in MiB through NVML, or None when NVML cannot tell."""
    try:
        import pynvml  # type: ignore[import-not-found,import-untyped,unused-ignore]  # pure Python, a dependency
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).free) // (1024 * 1024)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # a driver hiccup must not break placement; fall back to replica counts
        return None
