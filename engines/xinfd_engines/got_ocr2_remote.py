"""GOT-OCR2's original weights (``stepfun-ai/GOT-OCR2_0``, ``model_type`` ``GOT``) through their remote code
(runs in the replica process only, in a venv with transformers 4.37.2 as the family pins).

The remote code documents one entry point, ``model.chat(tokenizer, image_file, ocr_type='ocr'|'format')``,
which opens ``image_file`` itself, decodes greedily up to 4096 new tokens on CUDA (it calls ``.cuda()``), and
returns the whole text. So this object:

* writes the request's image to a temporary file in the replica's cache directory (removed once ``chat()``
  returns);
* runs ``chat()`` on a thread, one at a time (the model is not safe to share between threads);
* yields the answer as one delta, cut to ``max_tokens`` tokens (finish reason "length" when it was cut) and at
  the first stop string; completion tokens are the answer's re-tokenized length, the closest to exact that an
  API returning text allows;
* cannot stop ``chat()`` early: closing the iterator discards the answer when the thread finishes.

The prompt it counts for usage is the one ``chat()`` builds (its MPT-style conversation with 256 image tokens).
Not testable without the hub: what the weights need is in the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any

from xinfd.types import ChatMessage, GeneratedDelta, GenerateRequest
from xinfd_engines.got_ocr2 import Mode, check_one_image, image_file, ocr_mode
from xinfd_engines.transformers_model import TransformersOptions
from xinfd_engines.transformers_stream import DeltaBuilder

log = logging.getLogger(__name__)

IMAGE_TOKENS = 256  # chat()'s image_token_len
SYSTEM = "<|im_start|>system\n        You should follow the instructions carefully and explain your answers in detail."
QUERIES: Mapping[Mode, str] = {"ocr": "OCR: ", "format": "OCR with format: "}


def remote_prompt(mode: Mode) -> str:
    """The prompt ``chat()`` sends for ``mode`` (its conversation: system, user with the image, assistant)."""
    user = "<img>" + "<imgpad>" * IMAGE_TOKENS + "</img>\n" + QUERIES[mode]
    return f"{SYSTEM}<|im_end|><|im_start|>user\n{user}<|im_end|><|im_start|>assistant\n"


class GotOcr2RemoteModel:
    """A ``TextModel`` that takes images, around the remote code's ``chat()``."""

    context_window: int | None = None
    accepts_images = True

    def __init__(self, *, model: Any, tokenizer: Any, options: TransformersOptions) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.options = options
        self.prompts: dict[str, Mode] = {remote_prompt(mode): mode for mode in QUERIES}
        self._lock = threading.Lock()
        self.cancelled = 0

    @classmethod
    def load(cls, location: str, options: TransformersOptions) -> GotOcr2RemoteModel:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=True)
        # As the model card loads it; chat() moves its inputs to CUDA, so the model goes there too.
        model = AutoModel.from_pretrained(
            location,
            trust_remote_code=True,
            low_cpu_mem_usage=True,
            use_safetensors=True,
            pad_token_id=tokenizer.eos_token_id,
        )
        model = model.eval().cuda()
        log.info("loaded GOT-OCR2 %s (remote code)", location)
        return cls(model=model, tokenizer=tokenizer, options=options)

    def render_chat(self, messages: list[ChatMessage], options: Mapping[str, Any]) -> str:
        check_one_image(sum(len(m.images) for m in messages))
        return remote_prompt(ocr_mode(messages))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GeneratedDelta]:
        check_one_image(len(request.images))
        mode = self.prompts.get(request.prompt)
        if mode is None:
            from xinfd.errors import InvalidRequestError

            raise InvalidRequestError("GOT-OCR2 serves chat requests with an image", param="prompt")
        path = image_file(request.images[0], self.options.cache_dir)
        finished = False
        try:
            answer = await asyncio.to_thread(self._chat, path, mode)
            ids = list(self.tokenizer(answer)["input_ids"])
            cut = len(ids) > request.max_tokens
            if cut:
                ids = ids[: request.max_tokens]
                answer = str(self.tokenizer.decode(ids))
            piece = DeltaBuilder(stop=request.stop).push(answer, final=True)
            tokens = len(ids) if not piece.stopped else self.count_tokens(piece.content)
            finished = True
            yield GeneratedDelta(
                text=piece.content, finish_reason="length" if cut and not piece.stopped else "stop", tokens=tokens
            )
        finally:
            if not finished:
                self.cancelled += 1

    def _chat(self, path: str, mode: Mode) -> str:
        """Run ``chat()`` on ``path`` and remove the file: here, in the thread, because a cancelled request's
        thread still opens it later."""
        try:
            with self._lock:
                return str(self.model.chat(self.tokenizer, path, ocr_type=mode))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def close(self) -> None:
        pass
