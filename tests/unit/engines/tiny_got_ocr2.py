"""A tiny GOT-OCR2 built on the spot, in transformers' native format (``GotOcr2ForConditionalGeneration``,
``model_type`` ``got_ocr2``): random weights, a BPE tokenizer trained on a few sentences with the special tokens
``GotOcr2Processor`` needs (``<|im_start|>``, ``<|im_end|>``, ``<img>``, ``</img>``, ``<imgpad>``), and a
``GotOcr2ImageProcessor`` that resizes to 32x32 pixels.

No hub is reachable from tests; the folder loads with ``AutoProcessor`` / ``GotOcr2ForConditionalGeneration`` like
``stepfun-ai/GOT-OCR-2.0-hf``. 32-pixel images in 4-pixel patches give an 8x8 grid, which the projector's two
stride-2 convolutions turn into 2x2 = 4 image tokens (256 for the real 1024-pixel model). Random weights write
garbage: tests check the shape of answers, never their words.
"""

from __future__ import annotations

import io
from pathlib import Path

from tests.unit.engines.tiny_models import CORPUS

IMAGE_SIZE = 32
PATCH_SIZE = 4
IMAGE_TOKENS = 4  # (32 / 4 / 2 / 2) ** 2
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<imgpad>"]


def build_tiny_got_ocr2(path: Path, *, seed: int = 0) -> Path:
    """Write a random tiny native GOT-OCR2 with its processor to ``path``; return ``path``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GotOcr2Config,
        GotOcr2ForConditionalGeneration,
        GotOcr2ImageProcessor,
        GotOcr2Processor,
        PreTrainedTokenizerFast,
    )

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([*CORPUS, "OCR: ", "OCR with format: ", "system user assistant"], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    image_processor = GotOcr2ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = GotOcr2Processor(image_processor=image_processor, tokenizer=tokenizer)
    path.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(path)
    hidden = 32
    config = GotOcr2Config(
        vision_config={
            "hidden_size": 32,
            "output_channels": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "window_size": 4,
            "global_attn_indexes": [1],
            "mlp_dim": 64,
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 512,
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        },
        image_token_index=tokenizer.convert_tokens_to_ids("<imgpad>"),
        image_seq_length=IMAGE_TOKENS,
    )
    torch.manual_seed(seed)
    model = GotOcr2ForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(path)
    return path


def tiny_png(width: int = 20, height: int = 12) -> bytes:
    """A small PNG with a few dark strokes on white (what an OCR model is fed)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).line((1, height // 2, width - 2, height // 2), fill="black", width=2)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
