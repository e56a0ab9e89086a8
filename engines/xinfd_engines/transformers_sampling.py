"""Where transformers' continuous batching falls short on CPU: its per-request top-p warper sorts every row's
whole vocabulary at every step, even for requests whose ``top_p`` is 1.0, for which top-p filters nothing.

OpenAI's default is ``top_p=1``, and greedy requests (``temperature=0``) never need it either, so in practice
almost every row paid for a sort of nothing: with SmolLM2 (49,152-token vocabulary) at 16 concurrent streams
that sort was a quarter of the replica's time (py-spy, ``benchmarks/batching.py --model-path``). The warper
here keeps transformers' own arithmetic for the rows that ask for top-p and returns the other rows untouched.
Runs in the replica process only (imports transformers).
"""

from __future__ import annotations

from typing import Any

_RowwiseTopP: type | None = None


def _rowwise_top_p_class() -> type:
    """The subclass of transformers' per-request top-p warper that filters only rows with ``top_p < 1``."""
    global _RowwiseTopP
    if _RowwiseTopP is None:
        import torch
        from transformers.generation.continuous_batching.cb_logits_processors import (
            ContinuousBatchingTopPLogitsWarper,
        )

        class RowwiseTopP(ContinuousBatchingTopPLogitsWarper):  # type: ignore[misc]
            def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
                top_p = tensor_arg[: scores.size(0)].view(dtype=torch.float32)
                active = top_p < 1.0
                if not bool(active.any()):
                    return scores  # nothing to filter: no sort at all
                if bool(active.all()):
                    return super().__call__(scores, tensor_arg)  # type: ignore[no-any-return]
                rows = active.nonzero().squeeze(-1)
                filtered = super().__call__(scores.index_select(0, rows), tensor_arg[: scores.size(0)][rows])
                return scores.index_copy(0, rows, filtered)

        _RowwiseTopP = RowwiseTopP
    return _RowwiseTopP


def skip_noop_top_p(manager: Any) -> int:
    """Swap the manager's top-p warpers for the row-wise one (same state, same arithmetic); returns how many."""
    rowwise = _rowwise_top_p_class()
    processors = getattr(getattr(manager, "logit_processor", None), "logits_processor", None) or []
    swapped = 0
    for processor in processors:
        if isinstance(processor, rowwise.__mro__[1]) and not isinstance(processor, rowwise):
            processor.__class__ = rowwise
            swapped += 1
    return swapped
