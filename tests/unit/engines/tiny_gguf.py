"""The tiny random Llama of ``tiny_models`` as a GGUF file, for fast llama.cpp tests.

``write_tiny_llama_gguf`` converts the folder that ``build_tiny_llama`` writes (safetensors weights,
``tokenizer.json``, ``config.json``, the chat template) into one F32 GGUF with the ``gguf`` package. The result
loads in llama.cpp in milliseconds and gives the same greedy tokens as transformers on the folder, so the
llama.cpp engine is tested without SmolLM2 or any download.

Two things differ between the layouts and are converted here:

* Rotary embeddings. Hugging Face's Llama rotates dimension ``i`` of a head together with ``i + d/2``
  ("rotate half"); llama.cpp's ``llama`` architecture uses the original interleaved layout, dimension ``2i``
  with ``2i + 1``, at the same frequency ``base ** (-2i / d)``. Reordering the output rows of the Q and K
  projections head by head (row ``i`` to ``2i``, row ``i + d/2`` to ``2i + 1``) makes llama.cpp rotate exactly
  the pairs transformers rotates; Q and K are reordered alike, so their dot products (the attention scores)
  are unchanged and V / the output projection stay as they are.
* The tokenizer. The byte-level BPE of ``tokenizer.json`` becomes a ``gpt2`` tokenizer model: tokens in id
  order (byte-level strings, as llama.cpp expects), merges as ``"a b"``, the GPT-2 pre-tokenizer regex
  (``gpt-2``), special added tokens as control tokens and the other added tokens (``<think>``) as user-defined
  tokens, which llama.cpp matches in text and prints as they are.

Test helper only: imports numpy, safetensors and gguf, none of which the daemon needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Hugging Face parameter names (per layer) -> llama.cpp tensor names.
LAYER_TENSORS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def interleave_rope_rows(weight: Any, n_heads: int) -> Any:
    """Reorder a Q or K projection (``(n_heads * head_dim, hidden)``) from rotate-half to interleaved pairs.

    Within each head, row ``i`` goes to ``2i`` and row ``i + head_dim/2`` to ``2i + 1`` (see the module
    docstring): viewed as ``(heads, 2, head_dim/2, hidden)``, swapping the two middle axes does exactly that.
    """
    rows, cols = weight.shape
    head_dim = rows // n_heads
    return weight.reshape(n_heads, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _tokenizer_fields(folder: Path) -> dict[str, Any]:
    """Tokens, token types, merges and special ids of the folder's byte-level BPE ``tokenizer.json``."""
    import gguf

    data = json.loads((folder / "tokenizer.json").read_text())
    model = data["model"]
    if model.get("type") != "BPE" or data.get("pre_tokenizer", {}).get("type") != "ByteLevel":
        raise ValueError("only byte-level BPE tokenizers convert to a gpt2 GGUF tokenizer")
    by_id: dict[int, tuple[str, int]] = {i: (t, gguf.TokenType.NORMAL) for t, i in model["vocab"].items()}
    for added in data.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
        by_id[added["id"]] = (added["content"], kind)
    if sorted(by_id) != list(range(len(by_id))):
        raise ValueError("token ids are not contiguous")
    tokens = [by_id[i][0] for i in range(len(by_id))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    config = json.loads((folder / "tokenizer_config.json").read_text())
    ids = {t: i for i, t in enumerate(tokens)}

    def special_id(name: str) -> int | None:
        token = config.get(name)
        if isinstance(token, dict):  # older tokenizer_config.json: {"content": "<s>", ...}
            token = token.get("content")
        return ids.get(token) if isinstance(token, str) else None

    # Whether encoding a text adds BOS: the post-processor's template for one sequence says so.
    single = (data.get("post_processor") or {}).get("single") or []
    bos = config.get("bos_token")
    add_bos = any(part.get("SpecialToken", {}).get("id") == bos for part in single)
    return {
        "tokens": tokens,
        "types": [int(by_id[i][1]) for i in range(len(by_id))],
        "merges": merges,
        "bos": special_id("bos_token"),
        "eos": special_id("eos_token"),
        "unk": special_id("unk_token"),
        "add_bos": add_bos,
    }


def _chat_template(folder: Path) -> str | None:
    """The folder's chat template: ``chat_template.jinja`` (transformers 5) or ``tokenizer_config.json``."""
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    template = json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template")
    return template if isinstance(template, str) else None


def write_tiny_llama_gguf(hf_folder: Path, out: Path) -> Path:
    """Convert a ``build_tiny_llama`` folder (any Hugging Face Llama with a byte-level BPE tokenizer and
    safetensors weights in one file) into an F32 GGUF at ``out``; return ``out``."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    config = json.loads((hf_folder / "config.json").read_text())
    weights = load_file(str(hf_folder / "model.safetensors"))
    hidden = int(config["hidden_size"])
    n_heads = int(config["num_attention_heads"])
    n_kv_heads = int(config.get("num_key_value_heads") or n_heads)
    head_dim = int(config.get("head_dim") or hidden // n_heads)
    rope = config.get("rope_parameters") or {}  # transformers 5; older configs have rope_theta at the top
    rope_theta = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    tok = _tokenizer_fields(hf_folder)

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(hf_folder.name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope_theta)
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(len(tok["tokens"]))

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # the GPT-2 regex, as tokenizers' ByteLevel(use_regex=True) splits
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["types"])
    writer.add_token_merges(tok["merges"])
    if tok["bos"] is not None:
        writer.add_bos_token_id(tok["bos"])
    if tok["eos"] is not None:
        writer.add_eos_token_id(tok["eos"])
    if tok["unk"] is not None:
        writer.add_unk_token_id(tok["unk"])
    writer.add_add_bos_token(tok["add_bos"])
    writer.add_add_eos_token(False)
    template = _chat_template(hf_folder)
    if template:
        writer.add_chat_template(template)

    def add(name: str, array: Any) -> None:
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))

    add("token_embd.weight", weights["model.embed_tokens.weight"])
    for layer in range(int(config["num_hidden_layers"])):
        for hf_name, name in LAYER_TENSORS.items():
            array = weights[f"model.layers.{layer}.{hf_name}.weight"]
            if name == "attn_q":
                array = interleave_rope_rows(array, n_heads)
            elif name == "attn_k":
                array = interleave_rope_rows(array, n_kv_heads)
            add(f"blk.{layer}.{name}.weight", array)
    add("output_norm.weight", weights["model.norm.weight"])
    # Tied embeddings have no lm_head in the file; llama.cpp would fall back to token_embd, writing it is simpler.
    add("output.weight", weights.get("lm_head.weight", weights["model.embed_tokens.weight"]))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def tiny_llama_gguf(folder: Path, *, think_template: bool = False) -> tuple[Path, Path]:
    """Build the tiny Llama under ``folder / "hf"`` and its GGUF at ``folder / "tiny.gguf"``; return both."""
    from tests.unit.engines.tiny_models import build_tiny_llama

    hf = build_tiny_llama(folder / "hf", think_template=think_template)
    return hf, write_tiny_llama_gguf(hf, folder / "tiny.gguf")
