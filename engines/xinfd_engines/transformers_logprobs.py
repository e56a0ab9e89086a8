"""Per-token log probabilities for the transformers engine, from the model's raw next-token distribution.

Transformers' continuous batching reports at most the sampled token's probability after temperature and top-p
(``return_logprobs``), with no alternatives; OpenAI's ``logprobs``/``top_logprobs`` are the model's own
distribution with the ``k`` most likely tokens. So a request that asks for them gets a ``TokenScorer``: it runs
the model over the prompt once, then over each batch of newly generated tokens, keeping its own KV cache, and
reads the log-softmax at every position (one extra forward per generated token, only for such requests).

Any generation path can use it (the continuous-batching one in ``transformers_model`` and a plain
``generate()`` fallback alike): give it the prompt's token ids, then ``score(new_ids)`` as tokens arrive.
torch is imported lazily: the daemon imports engine modules without it.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Sequence
from typing import Any

from xinfd.types import TokenLogprob


class TokenScorer:
    """Scores one request's generated tokens incrementally (see the module docstring).

    ``lock`` serialises the forwards of every scorer of a model (one per request), so concurrent requests do
    not run several extra forwards at once on top of the batch.
    """

    def __init__(self, model: Any, tokenizer: Any, prompt_ids: Sequence[int], top: int, lock: threading.Lock) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.top = top
        self._lock = lock
        self._cache: Any = None
        self._pending = list(prompt_ids)  # fed to the model on the next call; its last logits predict the next
        self._last: Any = None  # log-softmax predicting the next token

    def score(self, new_ids: Sequence[int]) -> list[TokenLogprob]:
        """The log probabilities of ``new_ids`` (generated after everything scored before), in order."""
        import torch

        found: list[TokenLogprob] = []
        with self._lock, torch.no_grad():
            for token in new_ids:
                if self._pending:
                    self._advance(torch)
                found.append(self._entry(torch, int(token)))
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

    def _entry(self, torch: Any, token: int) -> TokenLogprob:
        assert self._last is not None
        logprob = float(self._last[token])
        top: tuple[tuple[str, float], ...] = ()
        if self.top:
            values, indices = torch.topk(self._last, self.top)
            top = tuple((self._text(int(i)), float(v)) for v, i in zip(values, indices, strict=True))
        return TokenLogprob(token=self._text(token), logprob=logprob, top=top)

    def _text(self, token: int) -> str:
        return str(self.tokenizer.decode([token], skip_special_tokens=False))
