"""Public, plugin-facing data types of xinfd.

Everything a plugin author touches is defined here and in ``xinfd.hookspecs`` (the hooks and the ``Engine``
protocol). The types are frozen dataclasses so that engines *return data* and the core performs every side
effect (spawning, waiting, killing): a plugin can never leave a half-started process behind.

This module imports only the standard library: hookimpl modules import it in the daemon, which must stay free
of torch and engine libraries.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

# What an engine can serve: ``chat`` is ``/v1/chat/completions``, ``generate`` ``/v1/completions``, ``embed``
# ``/v1/embeddings``, ``rerank`` ``/v1/rerank`` (Xinference's and Jina's/Cohere's format), ``image``
# ``/v1/images/generations``; ``vision``: chat messages may carry ``image_url`` parts (Xinference's name for it).
Ability = Literal["chat", "generate", "embed", "rerank", "image", "vision"]
# Which endpoint a generation came from: engines split ``<think>`` reasoning out of chat answers only, and
# text completions keep it in the text.
RequestKind = Literal["chat", "completion"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """A model family known to the registry (builtin data, a plugin, or a user registration)."""

    name: str
    abilities: tuple[Ability, ...]
    engines: tuple[str, ...]
    context_length: int = 2048
    description: str = ""
    # The spec's ``virtualenv`` block: ``packages`` plus index options (model-virtual-environments spec).
    virtualenv: Mapping[str, Any] = field(default_factory=dict)
    # Free-form data for the engine (weights location, chat template notes, quantizations...).
    extra: Mapping[str, Any] = field(default_factory=dict)
    # Completion budget of a request that sets no max_tokens (None: the daemon's ``default_max_tokens``).
    default_max_tokens: int | None = None
    # Recommended sampling (``xinfd.sampling_defaults.SAMPLING_FIELDS``), for requests that do not set a field.
    sampling: Mapping[str, float | int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuInfo:
    """One GPU of the inventory (from NVML, or declared in the config)."""

    index: int
    name: str
    memory_mb: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Platform:
    """What an availability check may look at: the host, not the model venv."""

    system: str
    machine: str
    python_version: str
    gpus: tuple[GpuInfo, ...] = ()
    nvml_available: bool = False
    # Where ``gpus`` came from, in words: "NVML", "config file /etc/xinfd/xinfd.toml" or "environment variable
    # XINFD_GPUS" (declared devices replace NVML's), so a "no GPU" reason can say which inventory was empty.
    gpu_source: str = "NVML"
    # Why NVML gave no inventory ("no NVML: driver not found (NVML Shared Library Not Found)"); None when it
    # answered, or was not asked because GPUs are declared.
    nvml_error: str | None = None
    # With model venvs on, an engine's packages are installed at launch, so "not importable in the daemon's
    # environment" is not a reason to refuse; with venvs off it is.
    venv_enabled: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Availability:
    """Whether an engine can serve a model here, and a reason a human can act on when it cannot."""

    available: bool
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaSettings:
    """The daemon settings a replica consumes, chosen by the daemon and sent in its ``ReplicaContext``.

    Replicas never re-read the daemon's environment: a value set in the TOML file, an environment variable or
    a flag reaches every engine the same way, through this object. (``XINFERENCE_MAX_TOKENS`` is not here:
    the daemon applies it to each request it forwards, for every engine, so a SIGHUP changes it at once.)
    """

    # Continuous batching: requests per batch and the gathering window (``XINFERENCE_BATCH_SIZE`` / ``_INTERVAL``).
    batch_size: int = 32
    batch_interval: float = 0.003
    # Text-to-image batching (``XINFERENCE_TEXT_TO_IMAGE_BATCHING_SIZE``): requests of this size, "WIDTH*HEIGHT",
    # that arrive together run as one pipeline batch; ``None`` runs each request alone.
    text_to_image_batching_size: str | None = None


def replica_label(model_uid: str, replica_index: int) -> str:
    """``<model_uid>-r<index>``: how a replica is named everywhere (logs, files, slot table, ``X-Xinfd-Replica``).

    The one rule, here because both the daemon's supervisor (``xinfd.supervisor.identity``) and the replica
    process (``ReplicaContext.label``) need it and the replica must not import the supervisor.
    """
    return f"{model_uid}-r{replica_index}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaContext:
    """Everything one replica of a model needs to start, chosen by the daemon.

    ``socket_path`` is where the replica must serve HTTP (Unix socket); ``python`` the interpreter of the model's
    venv (or the daemon's own when venvs are off); ``options`` the launch options given by the user.
    """

    model_uid: str
    model_name: str
    engine: str
    replica_index: int
    socket_path: str
    python: str
    gpu_indices: tuple[int, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    log_dir: str = ""
    # A free loopback TCP port reserved for engines whose server cannot listen on a Unix socket (SGLang);
    # such engines set ``LaunchSpec.listen = "tcp"``.
    port: int = 0
    # Where engines keep derived weights (e.g. GGUF converted to safetensors) so a restart skips the work.
    cache_dir: str = ""
    settings: ReplicaSettings = field(default_factory=ReplicaSettings)
    # The CPU thread budget of a replica without a GPU (``xinfd.cpus``): the threads its CPU libraries should
    # run (torch intra/inter-op, llama.cpp ``n_threads``; 0 = not budgeted, the library's default) and the
    # cores the worker pins itself to before loading (() = not pinned). The daemon also sets
    # ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` in the replica's environment.
    cpu_threads: int = 0
    cpu_affinity: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        """This replica's name, the same the daemon uses for it (``replica_label``)."""
        return replica_label(self.model_uid, self.replica_index)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadinessProbe:
    """How the daemon knows a replica is ready: ``GET path`` on its socket answers 200.

    ``timeout_s`` bounds the whole start (model load included); ``interval_s`` is the poll period.
    """

    path: str = "/health"
    timeout_s: float = 600.0
    interval_s: float = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchSpec:
    """The process the daemon spawns for one replica. Returned by ``Engine.launch``.

    The daemon spawns ``argv`` in its own session (process group) with ``env`` layered over the daemon's
    environment, waits for ``readiness`` on the replica's socket, proxies requests there, and on stop sends
    ``stop_signal`` to the whole group, then SIGKILL after the grace period.
    """

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    readiness: ReadinessProbe = field(default_factory=ReadinessProbe)
    stop_signal: int = signal.SIGTERM
    # Prefix under which the replica serves the OpenAI API ("/v1" for xinfd's worker host and vLLM).
    api_prefix: str = "/v1"
    # Where the replica listens: its Unix socket (preferred: no port clashes, file permissions) or
    # ``127.0.0.1:replica.port`` for servers without Unix-socket support.
    listen: Literal["unix", "tcp"] = "unix"
    # Chat-template arguments the daemon adds to every chat request it forwards to this replica, unless the
    # request sets the same key (``enable_thinking`` from a launch's ``--enable-thinking``, for servers such
    # as vLLM that take it per request, not as a server flag).
    chat_template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # Modules the process imports before it serves (``python -m`` argv only): replicas with the same ones, the
    # same interpreter and environment fork from one process that imported them already (``xinfd.preloading``).
    # Empty: exec'd. The worker host sets the engine's ``preload_modules`` for replicas on the CPU only.
    preload: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------------------------
# Worker-side model objects (returned by ``Engine.load`` inside the replica process).


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageInput:
    """An ``image_url`` content part: ``data`` (a data URL's bytes) or ``url`` (http(s)), which the worker host
    fetches, with a size limit and a timeout, before the engine sees it."""

    url: str = ""
    data: bytes = b""
    media_type: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatMessage:
    """One chat message after validation: role, its text content (text parts joined) and its image parts.

    Text-only engines read ``content`` only; a request with images reaches only a model object that declares
    ``accepts_images = True`` (the worker host answers 400 otherwise).
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    images: tuple[ImageInput, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerateRequest:
    """A generation request as the worker host hands it to an engine's model object.

    ``prompt`` is already rendered (``TextModel.render_chat`` for a chat); ``max_tokens`` already fits the
    context and the operator's cap. ``kind`` says which endpoint asked: split ``<think>`` reasoning into
    ``GeneratedDelta.reasoning`` only for ``"chat"``.
    """

    request_id: str
    prompt: str
    max_tokens: int
    kind: RequestKind
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # The request's images in message order (bytes, fetched/decoded by the host); only for image models.
    images: tuple[bytes, ...] = ()
    # ``None``: the client asked for no log probabilities. ``k >= 0``: report each generated token's logprob
    # in ``GeneratedDelta.logprobs`` with its ``k`` most likely alternatives (OpenAI's ``top_logprobs``). Only
    # engines whose ``Engine.request_features`` include ``"logprobs"`` are ever asked.
    logprobs: int | None = None
    # vLLM's extra sampling parameters; None: the engine's own default (llama.cpp: top_k 40, no penalty). An
    # engine that cannot honour one says so in its docs and logs it; it does not pretend.
    top_k: int | None = None
    repetition_penalty: float | None = None
    # False: the client reads only the whole answer (a non-streamed request), so an engine may hand its tokens
    # over in fewer, larger pieces (one at the end) instead of one delta per step. Deltas are still welcome.
    streamed: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenLogprob:
    """One generated token with its log probability and, when asked, the most likely alternatives.

    ``token`` is the token's text (as the tokenizer decodes it alone); ``top`` holds ``(text, logprob)`` pairs,
    most likely first, as many as ``GenerateRequest.logprobs`` asked for.
    """

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class GeneratedDelta:
    """A piece of generated text. The last delta of a request carries ``finish_reason`` ("stop" or "length").

    ``reasoning`` is thinking text (a ``<think>`` block) that the host returns as ``reasoning_content``, apart
    from the answer, as vLLM does; engines without a thinking mode leave it empty.
    """

    text: str
    finish_reason: str | None = None
    reasoning: str = ""
    # Completion tokens generated for this request so far (cumulative, end-of-sequence token excluded). The host
    # reports the last value as usage.completion_tokens; when an engine leaves it None, the host re-tokenizes
    # the text instead, which can differ from what was generated (text does not always re-encode to its tokens).
    tokens: int | None = None
    # The tokens this delta's text came from, with their log probabilities: set only when the request asked
    # (``GenerateRequest.logprobs``); the host returns them in OpenAI's shape for chat and text completions.
    logprobs: tuple[TokenLogprob, ...] = ()


@runtime_checkable
class TextModel(Protocol):
    """A loaded model that generates text; the worker host owns HTTP, streaming, batching and cancellation.

    ``context_window`` is the context the loaded engine really has, when it is smaller than the model family's
    ``context_length`` (llama.cpp's ``n_ctx``); ``None`` means the family's ``context_length``. The host
    checks prompts and ``max_tokens`` against it, so a prompt that cannot fit is a 400 naming the limit, not
    an engine error. A plain attribute (``context_window = None``) implements it.
    """

    @property
    def context_window(self) -> int | None:
        """The loaded engine's context in tokens, or ``None`` for the model family's ``context_length``."""
        ...

    def render_chat(self, messages: list[ChatMessage], options: Mapping[str, Any]) -> str:
        """Turn chat messages into a prompt (the model's chat template)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Number of tokens ``text`` encodes to (for usage and context-length checks)."""
        ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[GeneratedDelta]:
        """Stream deltas for ``request``. Closing the iterator (client gone) must stop the work."""
        ...


@runtime_checkable
class EmbeddingModel(Protocol):
    """A loaded model that embeds texts.

    ``context_window`` as for ``TextModel``: the longest input the loaded engine takes, when smaller than the
    family's ``context_length``; ``None`` for the family's. Longer inputs are refused with a 400.
    """

    @property
    def context_window(self) -> int | None:
        """The longest input in tokens, or ``None`` for the model family's ``context_length``."""
        ...

    def count_tokens(self, text: str) -> int:
        """Number of tokens ``text`` encodes to (for usage)."""
        ...

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector per input text, in order."""
        ...


@runtime_checkable
class RerankModel(Protocol):
    """A loaded model that scores documents against a query (a cross-encoder); ``/v1/rerank``.

    ``context_window`` as for ``TextModel``: the longest query + document pair in tokens, when smaller than the
    family's ``context_length``; ``None`` for the family's. Longer pairs are refused with a 400 naming the
    document, never silently truncated.
    """

    @property
    def context_window(self) -> int | None:
        """The longest query + document pair in tokens, or ``None`` for the family's ``context_length``."""
        ...

    def count_pair_tokens(self, query: str, document: str) -> int:
        """Number of tokens the pair encodes to, special tokens included (for usage and the length check)."""
        ...

    async def rerank(self, query: str, documents: list[str]) -> list[float]:
        """One relevance score per document, in the documents' order (higher is more relevant)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRequest:
    """A text-to-image request as the worker host hands it to an ``ImageModel``, after validation.

    ``width``/``height`` are one of the model's ``sizes``; ``seed`` makes the ``n`` images reproducible (image
    ``i`` uses ``seed + i``); ``None`` for the engine's defaults (steps, guidance). Image-to-image: ``image``
    is the input, decoded (``PIL.Image.Image``), ``strength`` how far the result may move from it; only a model
    whose ``accepts_image`` is true gets one. ``partial_images``: how many intermediate images the client
    streams, delivered through ``progress.partial(image_index, partial_index, png)`` if the progress has it.
    """

    request_id: str
    prompt: str
    n: int = 1
    width: int
    height: int
    seed: int | None = None
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    image: Any = None
    strength: float | None = None
    partial_images: int = 0


# Called by an image model after each denoising step with (steps done, total steps), from any thread.
ImageProgress = Callable[[int, int], None]


@runtime_checkable
class ImageModel(Protocol):
    """A loaded model that makes images from text; the worker host owns HTTP, metrics and cancellation.

    ``sizes`` are the ``(width, height)`` pairs the model accepts (the host refuses others with a 400 naming
    them). ``generate_images`` returns ``request.n`` encoded PNG images. Cancelling the awaiting task (the
    client went away) must stop the work between denoising steps, not after the last one. A model that also
    does image-to-image has an ``accepts_image`` attribute that is true (the host refuses edits otherwise).
    """

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        """The ``(width, height)`` pairs this model generates."""
        ...

    async def generate_images(self, request: ImageRequest, progress: ImageProgress) -> list[bytes]:
        """``request.n`` PNG images for ``request``; call ``progress`` after each denoising step."""
        ...


# What ``Engine.load`` returns: the worker host serves whichever protocol the object implements. Any of them may
# also have a ``close()`` method (optional, so not in the protocols): the worker host calls it once when it stops,
# after the last request, to stop the engine's own threads (a batching loop) before the interpreter exits: a
# thread still inside torch at exit aborts the process ("terminate called without an active exception").
LoadedModel = TextModel | EmbeddingModel | RerankModel | ImageModel

RegisterModel = Callable[[ModelSpec], None]
