"""The transformers model object, served by xinfd's worker host (runs in the replica process only).

Continuous batching comes from transformers itself (``model.init_continuous_batching``, shipped since the
5.x releases): a background thread runs one batched forward pass per step over a paged KV cache; requests are
added between steps and ``cancel_request`` drops one at the next step. Results reach the asyncio loop through
``register_result_handler`` (``call_soon_threadsafe``), so no thread blocks the loop. We use it instead of a
hand-written scheduler because it already does what one would have to write (paged cache, chunked prefill,
joining between steps); what xinfd adds is what it lacks:

* the batch size (``ReplicaSettings.batch_size``, the daemon's ``XINFERENCE_BATCH_SIZE``) maps to
  ``max_requests_per_batch``; the batch interval (``XINFERENCE_BATCH_INTERVAL``) is a gathering window: a
  request that arrives while the model is idle waits that long, so requests arriving together are prefilled
  together;
* stop strings, the ``<think>`` split and incremental detokenisation (``transformers_stream``);
* aborts: closing the iterator (client gone, ``/abort``) cancels the request in the batch;
* top-p only for the rows that ask for it (``transformers_sampling``): transformers sorts every row's vocabulary
  at every step, which at 16 streams of SmolLM2 was a quarter of the replica's time.

Sampling in transformers' batching is chosen per manager (``do_sample``), with per-request temperature and
top_p (each row's own values: ``test_transformers_rows`` checks a greedy row beside a hot one). Requests with
``temperature=0`` get a temperature of 1e-5, which makes sampling pick the arg-max token. A per-request
``seed`` and ``logprobs`` are served by hooks in the batch step (``transformers_rows``): the row draws with
its own generator, and its raw log-softmax is copied from the batch's logits. ``top_k`` and
``repetition_penalty`` are ignored on this path (logged once): the batch has no per-request processor for them. The
weights' ``generation_config.json`` temperature and top_p (``sampling_defaults``) apply to requests that
leave them unset.

Two more paths stream token ids into the same deltas, stop strings, cancellation and exact usage:
``transformers_static`` runs padded static batches with our own decode loop over the model's forward and KV
cache (seeds, logprobs, top_k and repetition_penalty too), on any release from 4.37 (releases without
continuous batching, which a model venv may pin: GOT-OCR2's 4.37.2); ``transformers_generate`` runs one
``generate()`` per request on a thread.
The launch option ``batching`` (auto, continuous, static, threads) picks one, and ``choose_path`` says what
``auto`` takes and why (continuous batching on CUDA, static batches elsewhere). ``path`` says which one a
replica uses ("continuous_batching", "static" or "generate").

Over 400 lines because it holds the generation paths' shared delta logic; the generate() fallback lives in
transformers_generate, the static batches in transformers_static and logprobs in transformers_logprobs, and the
continuous-batching manager setup is the next piece to move out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xinfd.errors import InvalidRequestError
from xinfd.types import ChatMessage, GeneratedDelta, GenerateRequest, ReplicaSettings, TokenLogprob
from xinfd_engines import gguf_cache
from xinfd_engines.transformers_generate import ThreadedGenerator
from xinfd_engines.transformers_logprobs import TokenScorer, token_entry
from xinfd_engines.transformers_rows import BatchRowHooks, RowPlan, row_plan
from xinfd_engines.transformers_static import StaticBatcher
from xinfd_engines.transformers_stream import DeltaBuilder, prompt_opens_reasoning, to_delta
from xinfd_engines.transformers_tokens import PromptEncoder

log = logging.getLogger(__name__)

GREEDY_TEMPERATURE = 1e-5
BATCHING = ("auto", "continuous", "static", "threads")


def choose_path(batching: str, *, continuous_batching: bool, cuda: bool) -> str:
    """The decode loop for a replica: "continuous_batching" (transformers' own, 5.x), "static" (our padded
    batches, ``transformers_static``) or "generate" (one ``generate()`` per request on a thread).

    ``auto`` takes continuous batching on CUDA, where requests join a running batch at the next step and the
    step's preparation is small beside the model, and static batches everywhere else: on CPU they beat
    transformers' continuous batching at 1 and at 8 requests (``benchmarks/batching.py --engine-only``; its
    step spends a quarter of the time preparing paged-cache tensors), and on releases without continuous
    batching (4.37.2) they beat a ``generate()`` thread per request at 8 requests by about 2x. ``threads`` keeps
    that older path for models whose forward our loop cannot drive (remote code that relies on
    ``generate()``'s own input preparation).
    """
    if batching == "static":
        return "static"
    if batching == "threads":
        return "generate"
    if batching == "continuous":
        if not continuous_batching:
            raise ValueError(
                "launch option batching=continuous needs transformers' continuous batching (transformers >= 5); "
                "use batching=static, threads or auto with this release"
            )
        return "continuous_batching"
    return "continuous_batching" if continuous_batching and cuda else "static"


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in (
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
    ):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise ValueError(f"launch option {name!r} must be true or false, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TransformersOptions:
    """Launch options and the replica's batching settings (options are validated in the daemon too)."""

    batch_size: int = 32
    batch_interval: float = 0.003
    # Where converted GGUF weights are kept for fast restarts (``ReplicaContext.cache_dir``); "" keeps none.
    cache_dir: str = ""
    enable_thinking: bool | None = None  # None: leave the template's own default
    reasoning: bool | None = None  # None: parse <think> when the chat template mentions it
    kv_cache_tokens: int = 16384
    dtype: str = "auto"
    # Which decode loop serves the replica (``choose_path``): "auto", "continuous", "static" or "threads".
    batching: str = "auto"

    @classmethod
    def from_launch(
        cls, options: Mapping[str, Any], settings: ReplicaSettings | None = None, *, cache_dir: str = ""
    ) -> TransformersOptions:
        """Check the launch options; batching comes from the daemon's ``settings`` (validated by the daemon's
        config; asserted here, since a batch of 0 would hang every request)."""
        settings = ReplicaSettings() if settings is None else settings
        batch_size, interval = settings.batch_size, settings.batch_interval
        if batch_size < 1:
            raise ValueError(f"replica settings: batch_size must be at least 1, got {batch_size}")
        if not (interval >= 0 and math.isfinite(interval)):
            raise ValueError(f"replica settings: batch_interval must be a non-negative number, got {interval}")
        values: dict[str, Any] = {"batch_size": batch_size, "batch_interval": interval, "cache_dir": cache_dir}
        for name in ("enable_thinking", "reasoning"):
            if options.get(name) is not None:
                values[name] = _as_bool(name, options[name])
        if options.get("kv_cache_tokens") is not None:
            raw = options["kv_cache_tokens"]
            if isinstance(raw, bool) or not str(raw).isdigit() or int(raw) < 1:
                raise ValueError(f"launch option 'kv_cache_tokens' must be a positive integer, got {raw!r}")
            values["kv_cache_tokens"] = int(raw)
        if options.get("dtype") is not None:
            dtype = str(options["dtype"])
            if dtype not in ("auto", "float32", "bfloat16", "float16"):
                raise ValueError(f"launch option 'dtype' must be auto, float32, bfloat16 or float16, got {dtype!r}")
            values["dtype"] = dtype
        if options.get("batching") is not None:
            batching = str(options["batching"])
            if batching not in BATCHING:
                raise ValueError(
                    f"launch option 'batching' must be auto, continuous, static or threads, got {batching!r}"
                )
            values["batching"] = batching
        return cls(**values)


class TransformersTextModel:
    """A causal LM with its tokenizer and a running continuous-batching manager."""

    context_window: int | None = None  # the family's context_length is the limit

    def __init__(self, *, model: Any, tokenizer: Any, options: TransformersOptions) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.options = options
        self._ids = itertools.count()
        self._active = 0
        template = getattr(tokenizer, "chat_template", None) or ""
        self.parse_reasoning = options.reasoning if options.reasoning is not None else "</think>" in str(template)
        self.eos_ids = _eos_ids(model, tokenizer)
        # The weights' recommended sampling (generation_config.json), for requests that leave a field unset.
        self.sampling_defaults = generation_defaults(getattr(model, "generation_config", None))
        self._unsupported_warned = False
        self._prompts = PromptEncoder(tokenizer)  # counted by the host, then encoded to generate: once
        self._score_lock = threading.Lock()  # TokenScorer forwards on the generate() path, one at a time
        self.manager: Any = None
        self.rows: BatchRowHooks | None = None  # the batch step's per-request hooks (seed, logprobs)
        self.threaded: ThreadedGenerator | None = None
        self.static: StaticBatcher | None = None
        self.path = choose_path(
            options.batching, continuous_batching=has_continuous_batching(model), cuda=_on_cuda(model)
        )
        if self.path == "continuous_batching":
            self.manager = self._start_manager()
        elif self.path == "static":
            self.static = StaticBatcher(
                model=model,
                eos_ids=self.eos_ids,
                batch_size=options.batch_size,
                batch_interval=options.batch_interval,
            )
        else:
            self.threaded = ThreadedGenerator(model=model, eos_ids=self.eos_ids, concurrency=options.batch_size)
        log.info("serving with transformers' %s path", self.path)
        # Counters for tests and logs: tokens produced, and requests cancelled before their end.
        self.tokens_generated = 0
        self.cancelled = 0

    # -- loading -------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, location: str, options: TransformersOptions) -> TransformersTextModel:
        """Load a model folder, or a ``.gguf`` file through transformers' GGUF loader (dequantised)."""
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(location)
        kwargs: dict[str, Any] = {}
        source: str = location
        converted: Path | None = None
        if path.suffix == ".gguf":
            if not path.is_file():
                raise FileNotFoundError(f"GGUF file {location} does not exist")
            converted = gguf_cache.cache_entry(
                path,
                transformers_version=transformers.__version__,
                dtype=str(options.dtype),
                root=options.cache_dir,
            )
            if converted is not None and gguf_cache.is_complete(converted):
                source, converted = str(converted), None  # a previous start converted it already
            else:
                source, kwargs["gguf_file"] = str(path.parent), path.name
        dtype = _torch_dtype(torch, options.dtype)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        # transformers >= 4.56 names it ``dtype``; older releases only know ``torch_dtype``.
        kwargs[dtype_keyword(transformers.__version__)] = dtype
        model: Any = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        kwargs.pop(dtype_keyword(transformers.__version__))
        if converted is not None:
            gguf_cache.store(converted, model, tokenizer, source=path)
        if torch.cuda.is_available():
            model = model.to("cuda")
        model.eval()
        log.info("loaded %s (%s, %s parameters)", location, model.dtype, f"{model.num_parameters():,}")
        return cls(model=model, tokenizer=tokenizer, options=options)

    def _start_manager(self) -> Any:
        from transformers import GenerationConfig as _GenerationConfig

        GenerationConfig: Any = _GenerationConfig  # untyped constructor

        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        from xinfd_engines.transformers_rows import attach
        from xinfd_engines.transformers_sampling import skip_noop_top_p

        # Temperature and top_p differ from 1.0 here only so that their per-request processors exist;
        # every request passes its own values. top_k=None: OpenAI's API has no top-k.
        generation = GenerationConfig(
            do_sample=True,
            temperature=0.7,
            top_p=0.95,
            top_k=None,
            max_new_tokens=256,
            eos_token_id=self.eos_ids or -1,
            pad_token_id=self.eos_ids[0] if self.eos_ids else 0,
        )
        page = 256
        config = ContinuousBatchingConfig(
            page_size=page,
            num_blocks=max(4, math.ceil(self.options.kv_cache_tokens / page)),
            max_batch_tokens=continuous_batch_tokens(cuda=_on_cuda(self.model)),
            max_requests_per_batch=self.options.batch_size,
            per_request_processors=True,
            allow_block_sharing=False,
        )
        manager = self.model.init_continuous_batching(generation_config=generation, continuous_batching_config=config)
        if not skip_noop_top_p(manager):  # transformers_sampling: top_p=1 rows no longer sort the vocabulary
            log.warning("transformers' batching has no per-request top-p warper to replace; every row is sorted")
        self.rows = attach(manager)
        if self.rows is None:
            log.warning(
                "the batch step runs CUDA graphs or torch.compile: logprobs pause the batch for an extra "
                "forward, and requests with a seed are refused"
            )
        # A thread inherits daemon-ness from its creator: starting the manager from a daemon thread makes its
        # generation thread a daemon too, so the replica exits on SIGTERM instead of waiting for it.
        starter = threading.Thread(target=manager.start, daemon=True, name="xinfd-cb-start")
        starter.start()
        starter.join()
        return manager

    # -- TextModel -----------------------------------------------------------------------------------------
    def render_chat(self, messages: list[ChatMessage], options: Mapping[str, Any]) -> str:
        """Apply the tokenizer's chat template; ``options`` are the request's ``chat_template_kwargs``."""
        kwargs: dict[str, Any] = {}
        if self.options.enable_thinking is not None:
            kwargs["enable_thinking"] = self.options.enable_thinking
        kwargs.update(options)
        turns = [{"role": m.role, "content": m.content} for m in messages]
        if not getattr(self.tokenizer, "chat_template", None):
            # A base model without a template: a plain transcript, as transformers' old default did.
            return "".join(f"{t['role']}: {t['content']}\n" for t in turns) + "assistant:"
        return str(self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True, **kwargs))

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GeneratedDelta]:
        """Stream the request's tokens (from the running batch, or its own ``generate()`` thread); closing the
        iterator cancels the request."""
        if request.seed is not None and self.manager is not None and self.rows is None:
            raise InvalidRequestError(
                "this replica's batch runs CUDA graphs or torch.compile, where a per-request seed cannot be applied",
                param="seed",
            )
        ids = self._encode(request.prompt)
        chat = request.kind == "chat"  # text completions keep <think> in the text
        builder = DeltaBuilder(
            stop=request.stop,
            parse_reasoning=self.parse_reasoning and chat,
            starts_in_reasoning=prompt_opens_reasoning(request.prompt),
        )
        if (
            self.static is None
            and (request.top_k is not None or request.repetition_penalty is not None)
            and not self._unsupported_warned
        ):
            self._unsupported_warned = True
            log.warning(
                "top_k and repetition_penalty are ignored: transformers' batching has no per-request processor for them"
            )
        rid = f"{request.request_id}-{next(self._ids)}"
        wants_logprobs = request.logprobs is not None
        if self.static is not None:
            plan = row_plan(logprobs=wants_logprobs, seed=request.seed)
            source = self.static.tokens(ids, request, plan)
        else:
            plan = None if self.rows is None else self.rows.plan(rid, logprobs=wants_logprobs, seed=request.seed)
            source = (
                self.threaded.tokens(ids, request)
                if self.threaded is not None
                else self._batched_tokens(rid, ids, request)
            )
        # logprobs (GenerateRequest.logprobs): the batch's own raw rows, or a scorer serialised with the batch.
        scorer = None
        if request.logprobs is not None and (plan is None or not plan.logprobs):
            scorer = TokenScorer(self.model, self.tokenizer, ids, request.logprobs, self._scorer_exclusion())
        finished = False
        produced = 0
        scored: list[Any] = []
        try:
            async for tokens, done in source:
                self.tokens_generated += len(tokens) - produced
                fresh = tokens[produced:]
                new = [t for t in fresh if t not in self.eos_ids]
                produced = len(tokens)
                piece = builder.push(self._decode(tokens), final=done)
                eos = _ended_by_eos(tokens, self.eos_ids)
                if plan is not None and plan.logprobs:
                    scored += self._captured_logprobs(plan, fresh, request.logprobs or 0)
                elif scorer is not None and new:
                    scored += await asyncio.to_thread(scorer.score, new)
                delta = to_delta(piece, done=done, natural_stop=eos, tokens=produced - (1 if eos else 0))
                if delta is not None:
                    if scored:
                        delta, scored = dataclasses.replace(delta, logprobs=tuple(scored)), []
                    # Marked before the yield: a consumer that has its answer closes the iterator right
                    # there, and every finished request used to be counted and logged as cancelled.
                    ended = delta.finish_reason is not None
                    finished = ended and done
                    yield delta
                    if ended:
                        return
        finally:
            await source.aclose()  # cancels the request in the batch, or stops its generate() thread
            if self.rows is not None:
                self.rows.forget(rid)
            if not finished:
                self.cancelled += 1
                where = "in its generate() thread" if self.threaded is not None else "in the batch"
                log.info("%s cancelled %s after %d token(s)", request.request_id, where, produced)

    def _captured_logprobs(self, plan: RowPlan, fresh: list[int], top: int) -> list[TokenLogprob]:
        """Entries for ``fresh`` tokens from the rows the batch step copied (one per generated token, EOS
        included, in order; EOS gets no entry, as it is not part of the text)."""
        found = []
        for token in fresh:
            row = plan.rows.popleft()
            if token not in self.eos_ids:
                found.append(token_entry(row, int(token), top, self.tokenizer))
        return found

    def _scorer_exclusion(self) -> Callable[[], AbstractContextManager[Any]]:
        """What keeps a TokenScorer's forwards apart from everything else on the model (transformers_logprobs)."""
        if self.manager is not None:
            return self.manager.pause  # type: ignore[no-any-return]
        lock = self._score_lock
        return lambda: lock

    async def _batched_tokens(
        self, rid: str, ids: list[int], request: GenerateRequest
    ) -> AsyncGenerator[tuple[list[int], bool], None]:
        """``(tokens so far, finished)`` from transformers' continuous batching; closing cancels in the batch."""
        if self._active == 0 and self.options.batch_interval > 0:
            await asyncio.sleep(self.options.batch_interval)  # gathering window after an idle period
        results: asyncio.Queue[Any] = asyncio.Queue()
        temperature = request.temperature if request.temperature > 0 else GREEDY_TEMPERATURE
        self.manager.register_result_handler(rid, results.put_nowait)
        self.manager.add_request(
            ids,
            request_id=rid,
            max_new_tokens=request.max_tokens,
            streaming=True,
            eos_token_id=self.eos_ids or -1,
            temperature=float(temperature),
            top_p=float(request.top_p),
        )
        self._active += 1
        finished = False
        try:
            while True:
                output = await results.get()
                if output.error:
                    finished = True
                    raise RuntimeError(f"generation failed: {output.error}")
                done = output.is_finished()
                finished = done
                yield list(output.generated_tokens), done
                if done:
                    return
        finally:
            self._active -= 1
            if not finished:
                self.manager.cancel_request(rid)
                self._forget_handler(rid)

    # -- helpers -------------------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        # Chat templates write the BOS token themselves; the encoder adds it only to prompts that lack it.
        return self._prompts.encode(text)

    def _decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def _forget_handler(self, rid: str) -> None:
        """Drop the result handler of a cancelled request: transformers removes it only when a request
        finishes, and a cancelled one never does (the dict would grow by one entry per abort)."""
        router = getattr(self.manager, "output_router", None)
        lock, handlers = getattr(router, "_lock", None), getattr(router, "result_handlers", None)
        if lock is not None and isinstance(handlers, dict):
            with lock:
                handlers.pop(rid, None)

    def close(self) -> None:
        if self.manager is not None:
            self.manager.stop(block=True, timeout=5)
        if self.static is not None:
            self.static.close()


def has_continuous_batching(model: Any) -> bool:
    """Whether the imported transformers offers continuous batching (5.x: ``init_continuous_batching`` and its
    ``ContinuousBatchingConfig``); older releases are served by ``generate()`` threads instead."""
    if not callable(getattr(model, "init_continuous_batching", None)):
        return False
    try:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig  # noqa: F401
        from transformers.generation.continuous_batching.cb_logits_processors import (  # noqa: F401
            ContinuousBatchingTopPLogitsWarper,
        )
    except ImportError:
        return False
    return True


def dtype_keyword(version: str) -> str:
    """``from_pretrained``'s dtype argument: ``dtype`` since transformers 4.56, ``torch_dtype`` before."""
    parts = []
    for item in version.split(".")[:2]:
        digits = "".join(itertools.takewhile(str.isdigit, item))
        parts.append(int(digits or 0))
    return "dtype" if tuple(parts) >= (4, 56) else "torch_dtype"


def generation_defaults(config: Any) -> dict[str, float]:
    """The temperature and top_p a ``GenerationConfig`` (the weights' ``generation_config.json``) recommends,
    when it samples (``do_sample``) and sets them away from 1.0 (transformers' own defaults, so not a choice
    of the model's authors). top_k and repetition_penalty are left out: the batch cannot apply them per
    request."""
    if config is None or not getattr(config, "do_sample", False):
        return {}
    out: dict[str, float] = {}
    for name in ("temperature", "top_p"):
        value = getattr(config, name, None)
        if isinstance(value, int | float) and not isinstance(value, bool) and value != 1.0:
            out[name] = float(value)
    return out


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, int) and item >= 0 and item not in ids:
                ids.append(item)
    return ids


def continuous_batch_tokens(*, cuda: bool) -> int:
    """The token budget of one continuous-batching step. transformers sizes its attention masks by it times
    the whole cache (``M x (N + M)``, float32): at 2048 beside the default 16384-token cache that is ~150 MiB
    of a CPU replica, more than a small model's weights, for prefill chunks a CPU cannot compute any faster
    than four smaller ones (longer prompts are prefilled over several steps; measured: a tiny model's replica
    +163 MiB at 2048, +35 MiB at 256). On CUDA the large step keeps the GPU busy."""
    return 2048 if cuda else 256


def _on_cuda(model: Any) -> bool:
    device = getattr(model, "device", None)
    return getattr(device, "type", "cpu") == "cuda"


def _ended_by_eos(tokens: list[int], eos_ids: list[int]) -> bool:
    return bool(tokens) and tokens[-1] in eos_ids


def _torch_dtype(torch: Any, name: str) -> Any:
    if name == "auto":
        # float32 on CPU: bfloat16 matmuls are slow on most CPUs and float16 ones are missing.
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)
