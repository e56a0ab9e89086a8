"""A cache of GGUF files converted to safetensors folders, so a replica restart loads in well under a second.

transformers reads a GGUF file by rebuilding the tokenizer from its vocabulary and de-quantising every tensor:
~22 s for SmolLM2-135M on one CPU thread, paid again at every start. The converted folder loads in ~0.35 s with
the same weights (measured: identical logits and greedy tokens). The daemon hands each replica
``ReplicaContext.cache_dir`` (``$XINFERENCE_HOME/cache/converted``); when it is empty nothing is cached.
Entries are keyed by the file's path, size, modification time, the dtype and the transformers version, and
published atomically (temp folder + rename), so a replica killed mid-conversion never leaves a half-written
entry that a later start would use.

Runs inside the replica process only (imports torch/transformers lazily through its caller).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_COMPLETE = "xinfd-converted.json"


def cache_entry(gguf: Path, *, transformers_version: str, dtype: str, root: str) -> Path | None:
    """Where the converted copy of ``gguf`` lives (or would) under ``root``, or None when ``root`` is "" (off).

    The dtype is part of the key: a copy stored in bfloat16 must not be served to a float32 launch.
    """
    if not root:
        return None
    stat = gguf.stat()
    key = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers_version}|{dtype}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return Path(root) / f"{gguf.stem}-{digest}"


def is_complete(entry: Path) -> bool:
    return (entry / _COMPLETE).is_file()


def store(entry: Path, model: Any, tokenizer: Any, *, source: Path) -> None:
    """Write the de-quantised model and its tokenizer as a folder, then publish it by rename."""
    from safetensors.torch import save_file

    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        tokenizer.save_pretrained(tmp)
        config = model.config
        # The weights are no longer GGUF-quantised: loading must not look for a gguf file.
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        config.save_pretrained(tmp)
        # Tied weights (embeddings / lm_head) share storage: save each tensor once, as save_pretrained does.
        tensors: dict[str, Any] = {}
        seen: set[int] = set()
        for name, tensor in model.state_dict().items():
            if tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            tensors[name] = tensor.contiguous()
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / _COMPLETE).write_text(json.dumps({"source": str(source)}))
        try:
            os.rename(tmp, entry)
        except OSError:  # another replica published the same entry first: theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
            return
        log.info("converted %s to %s for fast restarts", source, entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
