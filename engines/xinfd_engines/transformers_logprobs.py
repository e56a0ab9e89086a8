"""Per-token log probabilities for the transformers engine, from the model's raw next-token distribution.

Transformers' continuous batching reports at most the sampled token's probability after temperature and top-p
(``return_logprobs``), with no alternatives; OpenAI's ``logprobs``/``top_logprobs`` are the model's own
distribution with the ``k`` most likely tokens. Two sources feed ``token_entry``:

* on the continuous-batching path, the batch step itself copies each asking row's raw log-softmax
  (``transformers_rows``): no extra forward, and the numbers are those of the logits the token was drawn from;
* elsewhere (the ``generate()`` path, or a batch running CUDA graphs / ``torch.compile``, where the step's
  Python hooks do not run) a ``TokenScorer``: it runs the model over the prompt once, then over each batch of
  newly generated tokens, keeping its own KV cache. Its forwards must never overlap a batch step: transformers'
  forward wrapper writes the step's ``is_causal=False`` into the shared ``model.config`` while the step runs, and
  a plain forward at that moment builds a bidirectional mask. ``serialise`` is the context that excludes them
  (the manager's ``pause()`` beside a batch; a plain lock among ``generate()`` threads, which pass no
  ``is_causal`` and so never write the config).

torch is imported lazily: the daemon imports engine modules without it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from xinfd.types import TokenLogprob


class TokenScorer:
    """Scores one request's generated tokens incrementally (see the module docstring).

    ``serialise()`` is entered around every forward (see the module docstring for why it must exclude the
    batch step).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        prompt_ids: Sequence[int],
        top: int,
        serialise: Callable[[], AbstractContextManager[Any]],
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.top = top
        self._serialise = serialise
        self._cache: Any = None
        self._pending = list(prompt_ids)  # fed to the model on the next call; its last logits predict the next
        self._last: Any = None  # log-softmax predicting the next token

    def score(self, new_ids: Sequence[int]) -> list[TokenLogprob]:
        """The log probabilities of ``new_ids`` (generated after everything scored before), in order."""
        import torch

        found: list[TokenLogprob] = []
        with self._serialise(), torch.no_grad():
            for token in new_ids:
                if self._pending:
                    self._advance(torch)
                assert self._last is not None
                found.append(token_entry(self._last, int(token), self.top, self.tokenizer))
                self._pending = [int(token)]
        return found

    def _advance(self, torch: Any) -> None:
        device = next(self.model.parameters()).device
        ids = torch.tensor([self._pending], dtype=torch.long, device=device)
        # transformers renamed forward's ``past_key_values`` to ``cache`` (5.2x, the old name warns); a
        # DynamicCache is filled in place, and releases without one hand the cache back in the output.
        name = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        if self._cache is None:
            try:
                from transformers import DynamicCache
            except ImportError:  # transformers < 4.36: tuples, returned in the output
                pass
            else:
                self._cache = DynamicCache()
        out = self.model(input_ids=ids, use_cache=True, **({} if self._cache is None else {name: self._cache}))
        returned = getattr(out, "past_key_values", None)
        if returned is not None:
            self._cache = returned
        self._last = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        self._pending = []


def token_entry(row: Any, token: int, top: int, tokenizer: Any) -> TokenLogprob:
    """``token``'s entry from ``row``, the log-softmax over the vocabulary that predicted it."""
    import torch

    alternatives: tuple[tuple[str, float], ...] = ()
    if top:
        values, indices = torch.topk(row, top)
        alternatives = tuple((_text(tokenizer, int(i)), float(v)) for v, i in zip(values, indices, strict=True))
    return TokenLogprob(token=_text(tokenizer, token), logprob=float(row[token]), top=alternatives)


def _text(tokenizer: Any, token: int) -> str:
    return str(tokenizer.decode([token], skip_special_tokens=False))
