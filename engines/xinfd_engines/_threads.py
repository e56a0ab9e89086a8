"""torch's thread pools from the replica's CPU thread budget (``ReplicaContext.cpu_threads``, ``xinfd.cpus``).

``OMP_NUM_THREADS`` (set by the daemon in the replica's environment) already sizes torch's intra-op pool when
torch initialises, but not its inter-op pool, which starts with one thread per core; both are set here, once,
before the model loads. 0 means the replica is not budgeted (it runs on a GPU): torch keeps its defaults.
"""

from __future__ import annotations

import contextlib
import logging

log = logging.getLogger(__name__)


def apply_torch_threads(threads: int) -> None:
    """Size torch's intra- and inter-op pools to ``threads`` (no-op for 0)."""
    if threads <= 0:
        return
    import torch

    torch.set_num_threads(threads)
    # Allowed once, before any inter-op work; a second replica load in one process keeps the first value.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(threads)
    log.info("torch threads: %d intra-op, %d inter-op", torch.get_num_threads(), torch.get_num_interop_threads())
