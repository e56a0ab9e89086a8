"""Prompt token ids for the transformers engine: one encoding per prompt, through the fast tokenizer's own
encoder (runs in the replica process only).

Profiled on a 2-core CPU with 8 concurrent requests on a tiny model, the replica's event loop spent more than
half of its busy time encoding prompts: the worker host counts a prompt's tokens (context check, usage) and the
engine then encodes the same text again to generate, each time through ``tokenizer(text)``, whose
``BatchEncoding`` machinery costs more than the Rust encoding inside it. ``PromptEncoder`` keeps the last
prompts' ids (the second ask is a dict lookup) and, for a fast tokenizer, calls ``tokenizers.Tokenizer.encode``
directly: the same ids (the same post-processor adds the special tokens), without the wrapper.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

# Prompts remembered: enough for every request a batch holds between its count and its generate.
CACHE_SIZE = 256


class PromptEncoder:
    """``encode(text)``: token ids of a prompt, BOS added only when the text lacks it (chat templates write it)."""

    def __init__(self, tokenizer: Any, cache_size: int = CACHE_SIZE) -> None:
        self.tokenizer = tokenizer
        bos = getattr(tokenizer, "bos_token", None)
        self._bos = bos if isinstance(bos, str) and bos else None
        backend = getattr(tokenizer, "_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
        self._fast = backend if callable(getattr(backend, "encode", None)) else None
        self._cache: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._size = cache_size

    def encode(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is not None:
            self._cache.move_to_end(text)
            return list(ids)
        special = not (self._bos and text.startswith(self._bos))
        if self._fast is not None:
            ids = tuple(self._fast.encode(text, add_special_tokens=special).ids)
        else:
            ids = tuple(self.tokenizer(text, add_special_tokens=special)["input_ids"])
        self._cache[text] = ids
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return list(ids)
