"""torch's pools follow the replica's CPU thread budget (``ReplicaContext.cpu_threads``); 0 leaves them."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from xinfd_engines._threads import apply_torch_threads  # noqa: E402


def test_torch_threads_follow_the_budget_and_zero_leaves_the_default() -> None:
    before = torch.get_num_threads()
    try:
        apply_torch_threads(1)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        apply_torch_threads(0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
