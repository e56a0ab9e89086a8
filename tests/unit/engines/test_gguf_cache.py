"""The converted-weights cache: keyed by file identity and dtype, published atomically, loads the same model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from xinfd_engines import gguf_cache

from tests.unit.engines.tiny_models import build_tiny_llama

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def test_cache_key_follows_file_identity_dtype_and_version(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    root = str(tmp_path / "cache")  # ReplicaContext.cache_dir
    first = gguf_cache.cache_entry(gguf, transformers_version="5.0", dtype="auto", root=root)
    assert first is not None and first.parent == tmp_path / "cache" and first.name.startswith("m-")
    assert gguf_cache.cache_entry(gguf, transformers_version="5.0", dtype="auto", root=root) == first
    assert gguf_cache.cache_entry(gguf, transformers_version="5.1", dtype="auto", root=root) != first
    assert gguf_cache.cache_entry(gguf, transformers_version="5.0", dtype="bfloat16", root=root) != first
    os.utime(gguf, ns=(1, 1))  # the file was replaced: the old conversion must not be used
    assert gguf_cache.cache_entry(gguf, transformers_version="5.0", dtype="auto", root=root) != first
    assert gguf_cache.cache_entry(gguf, transformers_version="5.0", dtype="auto", root="") is None


def test_stored_entry_loads_the_same_weights(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_tiny_llama(tmp_path / "tiny")
    model: Any = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    entry = tmp_path / "cache" / "tiny-abc"
    assert not gguf_cache.is_complete(entry)
    gguf_cache.store(entry, model, tokenizer, source=folder)
    assert gguf_cache.is_complete(entry)
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    again: Any = AutoModelForCausalLM.from_pretrained(entry)
    ids = AutoTokenizer.from_pretrained(entry)("hello world", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def test_failed_store_leaves_no_entry(tmp_path: Path) -> None:
    class Broken:
        def save_pretrained(self, path: Path) -> None:
            raise OSError("disk full")

    entry = tmp_path / "cache" / "x"
    with pytest.raises(OSError, match="disk full"):
        gguf_cache.store(entry, object(), Broken(), source=tmp_path)
    assert not entry.exists() and list((tmp_path / "cache").iterdir()) == []
