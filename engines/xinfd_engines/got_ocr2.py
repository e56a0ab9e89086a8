"""GOT-OCR2 served as a chat model by the transformers engine: an ``image_url`` part in, its OCR text out
(runs in the replica process only; the transformers engine's ``load`` picks this module when the weights'
``config.json`` is a GOT-OCR2 one).

Two kinds of weights exist, told apart by ``config.json``:

* **native** (``model_type`` ``got_ocr2``, transformers >= 4.49, e.g. ``stepfun-ai/GOT-OCR-2.0-hf``):
  ``GotOcr2ForConditionalGeneration`` and ``AutoProcessor``. Tokens are streamed from ``generate()`` on a thread
  (``transformers_generate.ThreadedGenerator``, with the image's ``pixel_values`` bound to the call), so deltas,
  stop strings, ``max_tokens``, exact usage and cancellation on close are those of the text models;
* **remote code** (``model_type`` ``GOT``, ``stepfun-ai/GOT-OCR2_0`` with ``trust_remote_code``, which needs
  transformers 4.37.2): ``model.chat(tokenizer, image_file, ocr_type=...)``, the one entry point its code
  documents. It takes an image *file*, so the bytes are written to a temporary file under the replica's cache
  directory; it returns the whole text at once (one delta), always decodes up to its own 4096 tokens, and calls
  ``.cuda()`` itself, so it needs a CUDA GPU. ``max_tokens`` is applied to its answer afterwards.

The user message's text is GOT's task, not free-form instructions: GOT was trained on two queries, plain OCR
(``OCR:``) and formatted OCR (``OCR with format:``, Markdown/LaTeX). Empty text or ``ocr`` asks for the first,
``format`` for the second; any other text is a 400 naming them, rather than being silently ignored. Each request
reads exactly one image; a chat without one is a 400 as well.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Literal

from xinfd.errors import InvalidRequestError
from xinfd.types import ChatMessage, GeneratedDelta, GenerateRequest
from xinfd_engines.transformers_generate import ThreadedGenerator
from xinfd_engines.transformers_model import TransformersOptions, dtype_keyword
from xinfd_engines.transformers_stream import DeltaBuilder, to_delta

log = logging.getLogger(__name__)

Variant = Literal["native", "remote"]
Mode = Literal["ocr", "format"]
# What the user message's text may say, and the GOT task it selects (compared case-insensitively, trimmed).
MODES: Mapping[str, Mode] = {"": "ocr", "ocr": "ocr", "format": "format", "ocr with format": "format"}
TASKS: tuple[Mode, ...] = ("ocr", "format")
END_OF_TURN = "<|im_end|>"  # GOT answers in ChatML; its turn ends here whatever the weights' eos says


def got_ocr2_variant(location: str) -> Variant | None:
    """``"native"`` or ``"remote"`` when the weights at ``location`` (a folder or a hub id in the local cache)
    are GOT-OCR2, else ``None`` (any other model, or no readable ``config.json``: the text model loads it)."""
    config = _read_config(location)
    if config is None:
        return None
    model_type = str(config.get("model_type", ""))
    architectures = [str(a) for a in config.get("architectures") or []]
    if model_type == "got_ocr2":
        return "native"
    if model_type == "GOT" or "GOTQwenForCausalLM" in architectures:
        return "remote"
    return None


def _read_config(location: str) -> dict[str, Any] | None:
    path = Path(location)
    if path.suffix == ".gguf":
        return None
    file = path / "config.json"
    if not path.is_dir():
        try:  # a hub id: transformers' own cache lookup (offline hosts find what was downloaded before)
            from transformers.utils.hub import cached_file

            found = cached_file(location, "config.json", _raise_exceptions_for_missing_entries=False)
        except Exception:  # not a hub id transformers can resolve: not ours to judge, the text model reports it
            return None
        if found is None:
            return None
        file = Path(found)
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def ocr_mode(messages: list[ChatMessage]) -> Mode:
    """The GOT task the chat asks for, from its last user message's text (see the module docstring)."""
    users = [m for m in messages if m.role == "user"]
    text = users[-1].content.strip().rstrip(":").strip().lower() if users else ""
    mode = MODES.get(text)
    if mode is None:
        raise InvalidRequestError(
            "GOT-OCR2 reads the text of the user message as its task: leave it empty or send 'ocr' for plain "
            f"OCR, 'format' for formatted OCR (Markdown/LaTeX); got {users[-1].content[:80]!r}",
            param="messages",
        )
    return mode


def check_one_image(count: int) -> None:
    """GOT reads one page per request: none or several images are a 400."""
    if count == 0:
        raise InvalidRequestError(
            "GOT-OCR2 is an OCR model: send the page as an image_url content part of the user message",
            param="messages",
        )
    if count > 1:
        raise InvalidRequestError(f"GOT-OCR2 reads one image per request, got {count}", param="messages")


def decode_image(data: bytes) -> Any:
    """The image as an RGB PIL image; bytes that are no image are a 400, not an engine error."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidRequestError(f"the image could not be decoded: {exc}", param="messages") from None
    return image.convert("RGB")


class _ImageBound:
    """The model with one request's image inputs bound to ``generate``: ``ThreadedGenerator`` passes the
    token ids, this adds ``pixel_values``."""

    def __init__(self, model: Any, inputs: Mapping[str, Any]) -> None:
        self._model, self._inputs = model, dict(inputs)
        self.device = model.device

    def generate(self, **kwargs: Any) -> Any:
        return self._model.generate(**kwargs, **self._inputs)


class GotOcr2Model:
    """Native GOT-OCR2 weights (``GotOcr2ForConditionalGeneration``) as a ``TextModel`` that takes images."""

    context_window: int | None = None
    accepts_images = True
    # GOT's authors decode greedily (their chat() and the -hf model card: do_sample=False): OCR has one right
    # answer. Requests that set a temperature keep theirs.
    sampling_defaults: Mapping[str, float] = {"temperature": 0.0}
    parse_reasoning = False

    def __init__(self, *, model: Any, processor: Any, options: TransformersOptions) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.options = options
        self.eos_ids = eos_ids(model, self.tokenizer)
        self.num_image_tokens = image_token_count(model.config.vision_config)
        self._slots = asyncio.Semaphore(max(1, options.batch_size))
        # The prompt of each task, as the processor builds it: its token count does not depend on the image
        # (one 1024-pixel view per image), so usage counts it exactly before any image is processed.
        self.prompt_ids = {mode: self._prompt_ids(mode) for mode in TASKS}
        self.prompts: dict[str, Mode] = {
            self.tokenizer.decode(ids, skip_special_tokens=False): mode for mode, ids in self.prompt_ids.items()
        }
        self.tokens_generated = 0
        self.cancelled = 0

    @classmethod
    def load(cls, location: str, options: TransformersOptions) -> GotOcr2Model:
        import torch
        import transformers
        from transformers import AutoProcessor as _AutoProcessor

        AutoProcessor: Any = _AutoProcessor  # untyped from_pretrained
        model_class: Any = getattr(transformers, "GotOcr2ForConditionalGeneration", None)
        if model_class is None:
            raise RuntimeError(
                f"{location} is a native GOT-OCR2 checkpoint (model_type got_ocr2), which needs transformers "
                f">= 4.49; this venv has {transformers.__version__}"
            )
        dtype = (
            torch.float32
            if options.dtype == "auto" and not torch.cuda.is_available()
            else (torch.bfloat16 if options.dtype == "auto" else getattr(torch, options.dtype))
        )
        processor = AutoProcessor.from_pretrained(location)
        model = model_class.from_pretrained(location, **{dtype_keyword(transformers.__version__): dtype})
        if torch.cuda.is_available():
            model = model.to("cuda")
        model.eval()
        log.info("loaded GOT-OCR2 %s (native, %s parameters)", location, f"{model.num_parameters():,}")
        return cls(model=model, processor=processor, options=options)

    # -- TextModel -----------------------------------------------------------------------------------------
    def render_chat(self, messages: list[ChatMessage], options: Mapping[str, Any]) -> str:
        check_one_image(sum(len(m.images) for m in messages))
        mode = ocr_mode(messages)
        return next(prompt for prompt, m in self.prompts.items() if m == mode)

    def count_tokens(self, text: str) -> int:
        mode = self.prompts.get(text)
        if mode is not None:
            return len(self.prompt_ids[mode])
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GeneratedDelta]:
        """Stream the OCR text of ``request.images[0]``; closing the iterator stops ``generate()``."""
        check_one_image(len(request.images))
        mode = self.prompts.get(request.prompt)
        if mode is None:  # /v1/completions: a free prompt is no GOT task (and carries no image anyway)
            raise InvalidRequestError("GOT-OCR2 serves chat requests with an image", param="prompt")
        image = decode_image(request.images[0])
        inputs = await asyncio.to_thread(self._inputs, image, mode)
        ids = [int(t) for t in inputs.pop("input_ids")[0].tolist()]
        inputs.pop("attention_mask", None)
        if len(ids) != len(self.prompt_ids[mode]):
            log.warning("prompt of %d tokens, %d counted for usage", len(ids), len(self.prompt_ids[mode]))
        async with self._slots:  # at most batch_size generate() threads at once
            threaded = ThreadedGenerator(model=_ImageBound(self.model, inputs), eos_ids=self.eos_ids, concurrency=1)
            deltas = self._stream(threaded.tokens(ids, request), request)
            try:
                async for delta in deltas:
                    yield delta
            finally:
                await deltas.aclose()  # now, not when the garbage collector finds it: that stops the thread

    async def _stream(self, source: Any, request: GenerateRequest) -> AsyncGenerator[GeneratedDelta, None]:
        builder = DeltaBuilder(stop=request.stop)
        produced, finished = 0, False
        try:
            async for tokens, done in source:
                self.tokens_generated += len(tokens) - produced
                produced = len(tokens)
                text = str(self.tokenizer.decode(tokens, skip_special_tokens=True))
                eos = bool(tokens) and tokens[-1] in self.eos_ids
                delta = to_delta(
                    builder.push(text, final=done), done=done, natural_stop=eos, tokens=produced - (1 if eos else 0)
                )
                if delta is not None:
                    ended = delta.finish_reason is not None
                    finished = ended and done  # before the yield: a consumer with its answer closes the iterator there
                    yield delta
                    if ended:
                        return
        finally:
            await source.aclose()  # stops the generate() thread at its next step
            if not finished:
                self.cancelled += 1
                log.info("%s cancelled after %d token(s)", request.request_id, produced)

    # -- helpers -------------------------------------------------------------------------------------------
    def _inputs(self, image: Any, mode: Mode) -> dict[str, Any]:
        encoded = self.processor(
            images=image, return_tensors="pt", format=mode == "format", num_image_tokens=self.num_image_tokens
        )
        device, dtype = self.model.device, self.model.dtype
        return {k: (v.to(device, dtype) if k == "pixel_values" else v) for k, v in encoded.items()}

    def _prompt_ids(self, mode: Mode) -> list[int]:
        from PIL import Image

        blank = Image.new("RGB", (8, 8), "white")
        encoded = self.processor(images=blank, format=mode == "format", num_image_tokens=self.num_image_tokens)
        return [int(t) for t in encoded["input_ids"][0]]

    def close(self) -> None:
        pass


def image_token_count(vision_config: Any) -> int:
    """Image tokens per view: the ViT's patch grid, halved twice by the projector's stride-2 convolutions
    (1024 / 16 = 64 -> 16x16 = 256 for the released weights). The processor's own default is 256 whatever the
    weights, so it is told this number."""
    size, patch = vision_config.image_size, vision_config.patch_size
    side = (size[0] if isinstance(size, list | tuple) else size) // (
        patch[0] if isinstance(patch, list | tuple) else patch
    )
    for _ in range(2):
        side = (side + 1) // 2
    return int(side * side)


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The weights' end-of-sequence ids plus ``<|im_end|>`` (the -hf generation config ends on
    ``<|endoftext|>``; its model card stops on ``<|im_end|>`` with ``stop_strings``)."""
    found: list[int] = []
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, int) and item >= 0 and item not in found:
                found.append(item)
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if isinstance(end, int) and end >= 0 and end != getattr(tokenizer, "unk_token_id", None) and end not in found:
        found.append(end)
    return found


def load_got_ocr2(location: str, variant: Variant, options: TransformersOptions, *, trust_remote_code: bool) -> Any:
    """The model object for GOT-OCR2 weights of ``variant`` (see ``got_ocr2_variant``)."""
    if variant == "native":
        return GotOcr2Model.load(location, options)
    from xinfd_engines.got_ocr2_remote import GotOcr2RemoteModel

    if not trust_remote_code:
        raise RuntimeError(
            f"{location} is GOT-OCR2 remote code (model_type GOT): set extra 'trust_remote_code': true in the "
            "model family to run it"
        )
    return GotOcr2RemoteModel.load(location, options)


def image_file(data: bytes, cache_dir: str) -> str:
    """Write ``data`` to a new file under ``cache_dir`` (the replica's; the system temp dir if unset) and
    return its path: the remote code opens images by path. The caller removes it."""
    folder = Path(cache_dir) / "got-ocr2-images" if cache_dir else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    handle, path = tempfile.mkstemp(dir=folder, suffix=".img")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    return path
