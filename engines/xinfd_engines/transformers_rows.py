"""Per-request hooks inside transformers' continuous-batching step: raw log probabilities and seeded sampling.

Both need something transformers' batch does not offer per request, and both are done on the batch's own
logits, in its own thread, so nothing else ever touches the model while a batch step runs:

* **logprobs.** OpenAI's ``logprobs``/``top_logprobs`` are the model's raw next-token distribution. A second
  forward beside the batch (the old ``TokenScorer`` design) is unsafe: transformers' forward wrapper
  (``utils/generic.py``) writes the batch's ``is_causal=False`` into the *shared* ``model.config`` for the
  length of each batch step, so a concurrent plain forward built a bidirectional mask and read a distribution
  off by ~0.1 nats (and a badly interleaved restore could leave the config non-causal for good). Here the
  log-softmax of each asking row's raw logits (before temperature and top-p) is copied the moment the batch
  computes them: the numbers come from the very logits the sampled token was drawn from, at no extra forward.
* **seed.** The batch samples every row with one ``torch.multinomial`` on the process-wide generator, so a
  per-request seed cannot be honoured there. For rows whose request has a seed, the hook draws the token itself
  from the row's processed distribution with the request's own ``torch.Generator`` and leaves only that token
  possible; the batch's multinomial then picks it. The same seed gives the same tokens whatever else is in the
  batch (up to float rounding of batch-dependent kernels, which on CPU are row-independent).

The hooks sit on the manager's ``ContinuousBatchingLogitsProcessorList`` (class swapped, as
``transformers_sampling`` does for top-p): ``prepare_tensor_args`` tells which request owns each logits row
(rows are the requests with a new token, in batch order), ``__call__`` sees the raw logits and returns the
processed ones. They cannot run under CUDA graphs or ``torch.compile`` (the Python body is not re-run on
replay); ``attach`` reports that, and the engine then serialises a scorer with the batch instead.
Runs in the replica process only (imports torch lazily).
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class RowPlan:
    """What one request asks of the batch step; ``rows`` are filled by the batch thread, read by the loop."""

    logprobs: bool = False
    generator: Any = None  # torch.Generator, for a request with a seed
    rows: collections.deque[Any] = field(default_factory=collections.deque)


def row_plan(*, logprobs: bool, seed: int | None) -> RowPlan | None:
    """What a request needs beyond plain sampling (raw logprobs, its own generator); None when nothing."""
    if not logprobs and seed is None:
        return None
    generator = None
    if seed is not None:
        import torch

        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed)
    return RowPlan(logprobs=logprobs, generator=generator)


class BatchRowHooks:
    """The per-request plans of one manager, keyed by the manager's request id."""

    def __init__(self) -> None:
        self._plans: dict[str, RowPlan] = {}
        self._lock = threading.Lock()
        self._order: list[str] = []  # request id of each logits row of the batch being prepared

    def plan(self, rid: str, *, logprobs: bool, seed: int | None) -> RowPlan | None:
        """Register what ``rid`` needs (before ``add_request``); None when it needs nothing."""
        plan = row_plan(logprobs=logprobs, seed=seed)
        if plan is None:
            return None
        with self._lock:
            self._plans[rid] = plan
        return plan

    def forget(self, rid: str) -> None:
        with self._lock:
            self._plans.pop(rid, None)

    def __len__(self) -> int:
        return len(self._plans)

    # -- called by the batch thread ------------------------------------------------------------------------
    def rows_of_batch(self, requests_in_batch: list[Any]) -> None:
        self._order = [fs.state.request_id for fs in requests_in_batch if fs.has_new_token]

    def before_processing(self, scores: Any) -> None:
        """Copy the raw log-softmax of every row whose request asked for logprobs."""
        if not self._plans:
            return
        with self._lock:
            asking = [
                (i, plan) for i, rid in enumerate(self._order) if (plan := self._plans.get(rid)) and plan.logprobs
            ]
        if not asking:
            return
        import torch

        index = torch.tensor([i for i, _ in asking], device=scores.device)
        logprobs = torch.log_softmax(scores.index_select(0, index).float(), dim=-1).cpu()
        for row, (_, plan) in zip(logprobs, asking, strict=True):
            plan.rows.append(row)

    def after_processing(self, scores: Any) -> Any:
        """Draw seeded rows' tokens with their own generator; every other token of such a row is masked."""
        if not self._plans:
            return scores
        with self._lock:
            seeded = [
                (i, plan) for i, rid in enumerate(self._order) if (plan := self._plans.get(rid)) and plan.generator
            ]
        if not seeded:
            return scores
        import torch

        scores = scores.clone()
        for i, plan in seeded:
            probs = torch.softmax(scores[i].float(), dim=-1).cpu()
            token = int(torch.multinomial(probs, 1, generator=plan.generator))
            scores[i].fill_(float("-inf"))
            scores[i, token] = 0.0
        return scores


_HookedList: type | None = None


def _hooked_list_class() -> type:
    global _HookedList
    if _HookedList is None:
        from transformers.generation.continuous_batching.cb_logits_processors import (
            ContinuousBatchingLogitsProcessorList,
        )

        class HookedList(ContinuousBatchingLogitsProcessorList):
            xinfd_rows: BatchRowHooks

            def prepare_tensor_args(self, requests_in_batch: list[Any], arg_storage: Any) -> Any:
                self.xinfd_rows.rows_of_batch(requests_in_batch)
                return super().prepare_tensor_args(requests_in_batch, arg_storage)

            def __call__(self, input_ids: Any, scores: Any, logits_processor_args: Any) -> Any:
                self.xinfd_rows.before_processing(scores)
                processed = super().__call__(input_ids, scores, logits_processor_args)
                return self.xinfd_rows.after_processing(processed)

        _HookedList = HookedList
    return _HookedList


def attach(manager: Any) -> BatchRowHooks | None:
    """Install the hooks on a manager that is not started yet; None when they cannot run there (CUDA graphs,
    torch.compile, or no logits processing in the step, so ``__call__`` would never be called)."""
    config = getattr(manager, "continuous_batching_config", None)
    processors = getattr(manager, "logit_processor", None)
    if config is None or processors is None or not getattr(processors, "do_processing", False):
        return None
    graphs = any(getattr(config, "cuda_graph_booleans", (False, False)))
    compiled = getattr(config, "varlen_compile_config", None) or getattr(config, "decode_compile_config", None)
    if graphs or compiled:
        return None
    hooks = BatchRowHooks()
    processors.__class__ = _hooked_list_class()
    processors.xinfd_rows = hooks
    return hooks
