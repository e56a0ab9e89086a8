"""The transformers engine's prompt encoder: the fast tokenizer's own encoder gives exactly what
``tokenizer(text)`` gives, BOS only where the text lacks it, each prompt encoded once, the cache bounded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from xinfd_engines.transformers_tokens import PromptEncoder

from tests.unit.engines.tiny_models import build_tiny_llama

TEXTS = ("hello", "the quick brown fox jumps over the lazy dog", "", "  spaces  and\nnew lines\t", "héllo wörld ✓")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoTokenizer

    folder: Path = build_tiny_llama(tmp_path_factory.mktemp("tok") / "m")
    # add_bos_token: transformers puts the BOS into the backend's post-processor, which the direct path uses.
    return AutoTokenizer.from_pretrained(folder, add_bos_token=True)


def reference(tokenizer: Any, text: str) -> list[int]:
    bos = tokenizer.bos_token
    return list(tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"])


def test_fast_encoding_equals_the_tokenizer_call_with_and_without_bos(tokenizer: Any) -> None:
    assert tokenizer.is_fast and tokenizer.bos_token
    encoder = PromptEncoder(tokenizer)
    assert encoder._fast is not None  # the direct path is the one under test
    for text in (*TEXTS, *(tokenizer.bos_token + t for t in TEXTS)):
        assert encoder.encode(text) == reference(tokenizer, text), text
    with_bos = encoder.encode("hello")
    assert with_bos[0] == tokenizer.bos_token_id
    assert encoder.encode(tokenizer.bos_token + "hello") == with_bos  # not added twice


def test_each_prompt_is_encoded_once_and_the_cache_is_bounded(tokenizer: Any) -> None:
    class Counting:
        def __init__(self, inner: Any) -> None:
            self.inner, self.calls = inner, 0

        def encode(self, text: str, add_special_tokens: bool) -> Any:
            self.calls += 1
            return self.inner.encode(text, add_special_tokens=add_special_tokens)

    encoder = PromptEncoder(tokenizer, cache_size=2)
    counting = Counting(encoder._fast)
    encoder._fast = counting
    first = encoder.encode("a prompt")
    first.append(-1)  # a caller's list is its own: the cached ids are untouched
    assert encoder.encode("a prompt") == reference(tokenizer, "a prompt") and counting.calls == 1
    encoder.encode("b")
    encoder.encode("c")  # evicts "a prompt", the least recently used
    encoder.encode("a prompt")
    assert counting.calls == 4 and len(encoder._cache) == 2


def test_a_slow_tokenizer_is_called_as_before() -> None:
    class Slow:
        is_fast = False
        bos_token = "<s>"

        def __call__(self, text: str, add_special_tokens: bool) -> dict[str, list[int]]:
            return {"input_ids": ([1] if add_special_tokens else []) + [len(w) for w in text.split()]}

    encoder = PromptEncoder(Slow())
    assert encoder.encode("ab c") == [1, 2, 1]
    assert encoder.encode("<s> ab") == [3, 2]
