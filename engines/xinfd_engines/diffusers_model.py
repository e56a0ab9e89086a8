"""The ``ImageModel`` over a diffusers pipeline (imported only inside the replica: it imports torch).

One pipeline call runs at a time, in a worker thread, so the event loop keeps answering health checks.
Requests wait in one queue served by one runner task. With a batching size (the spec's
``XINFERENCE_TEXT_TO_IMAGE_BATCHING_SIZE``), requests of that size with the same step count and guidance that
are waiting together are run as one pipeline call, up to ``max_batch`` images: while a batch is denoising, the
next requests gather, so batches form by themselves under load and a lone request is not delayed. Each image
has its own seeded generator, so an image is the same whether it ran alone or in a batch.

Image-to-image: ``AutoPipelineForImage2Image.from_pipe`` builds the image-to-image pipeline over the *same*
loaded components (no second copy of the weights); a pipeline family without one (``from_pipe`` refuses it)
leaves ``accepts_image`` false and the host refuses edits. An edit runs alone (never batched): its input image
and strength are its own, and the step count depends on the strength.

Partial images (``stream`` with ``partial_images``): at evenly spaced steps the callback decodes the current
latents of each asking request with the pipeline's VAE and hands the PNG to ``progress.partial``.

Cancellation: a request whose awaiting task is cancelled (the client went away) is marked; the pipeline's
``callback_on_step_end`` raises between steps once every request of the running batch is marked, so the
pipeline stops at the next step instead of finishing for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import logging
import random
import threading
from dataclasses import dataclass, field
from typing import Any

from xinfd.errors import InvalidRequestError
from xinfd.types import ImageProgress, ImageRequest

log = logging.getLogger(__name__)
# diffusers' image-to-image default: keep a fifth of the input's structure.
_DEFAULT_STRENGTH = 0.8


class _Cancelled(Exception):
    """Raised from the step callback to stop a pipeline whose requests are all gone."""


@dataclass(slots=True, eq=False)
class _Job:
    request: ImageRequest
    progress: ImageProgress
    steps: int
    future: asyncio.Future[list[bytes]]
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> tuple[int, int, int, float | None]:
        r = self.request
        return (r.width, r.height, self.steps, r.guidance_scale)


class DiffusersImageModel:
    """An ``ImageModel`` (``xinfd.types``) over a loaded text-to-image pipeline."""

    def __init__(
        self,
        pipe: Any,
        *,
        image_pipe: Any = None,
        sizes: tuple[tuple[int, int], ...],
        default_steps: int,
        batching_size: tuple[int, int] | None = None,
        max_batch: int = 32,
        device: str = "cpu",
    ) -> None:
        self.pipe = pipe
        self.image_pipe = image_pipe
        self.accepts_image = image_pipe is not None
        self._sizes = sizes
        self.default_steps = default_steps
        self.batching_size = batching_size
        self.max_batch = max(1, max_batch)
        self.device = device
        self.batches: list[int] = []  # images per pipeline call, for tests and the benchmark
        self._queue: list[_Job] = []
        self._wakeup: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._can_stop = "callback_on_step_end" in inspect.signature(pipe.__call__).parameters

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        return self._sizes

    @classmethod
    def load(
        cls,
        location: str,
        *,
        sizes: tuple[tuple[int, int], ...] | None,
        default_steps: int,
        batching_size: tuple[int, int] | None,
        max_batch: int,
    ) -> DiffusersImageModel:
        import torch
        from diffusers import AutoPipelineForText2Image

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float16 if device == "cuda" else torch.float32
        pipe = AutoPipelineForText2Image.from_pretrained(location, torch_dtype=dtype)
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)  # progress goes to the replica log, per request
        image_pipe = _image_to_image(pipe)
        native = _native_size(pipe)
        allowed = sizes or (native,)
        log.info(
            "loaded %s on %s (sizes %s, %d steps, batching %s, image-to-image %s)",
            location,
            device,
            ", ".join(f"{w}x{h}" for w, h in allowed),
            default_steps,
            "off" if batching_size is None else f"{batching_size[0]}x{batching_size[1]}",
            "no" if image_pipe is None else type(image_pipe).__name__,
        )
        return cls(
            pipe,
            image_pipe=image_pipe,
            sizes=allowed,
            default_steps=default_steps,
            batching_size=batching_size,
            max_batch=max_batch,
            device=device,
        )

    async def generate_images(self, request: ImageRequest, progress: ImageProgress) -> list[bytes]:
        loop = asyncio.get_running_loop()
        steps = request.num_inference_steps or self.default_steps
        if request.image is not None:
            if self.image_pipe is None:
                raise InvalidRequestError("this model's pipeline has no image-to-image variant", param="image")
            strength = request.strength if request.strength is not None else _DEFAULT_STRENGTH
            if int(steps * strength) < 1:
                raise InvalidRequestError(
                    f"strength {strength:g} x {steps} step(s) runs no denoising step: raise either", param="strength"
                )
        job = _Job(request=request, progress=progress, steps=steps, future=loop.create_future())
        self._queue.append(job)
        self._ensure_runner()
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            job.cancelled.set()
            if job in self._queue:
                self._queue.remove(job)
            raise

    def _ensure_runner(self) -> None:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        self._wakeup.set()
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._take_batch()
            try:
                images = await asyncio.to_thread(self._call, batch)
            except Exception as exc:
                for job in batch:
                    if job.future.done():
                        continue
                    if job.cancelled.is_set():
                        job.future.cancel()  # nobody awaits it: an exception there would be "never retrieved"
                    else:
                        job.future.set_exception(exc)
                continue
            for job, result in zip(batch, images, strict=True):
                if not job.future.done():
                    job.future.set_result(result)

    def _take_batch(self) -> list[_Job]:
        """The first waiting request, with the later ones it can share a pipeline call with."""
        first = self._queue.pop(0)
        batch = [first]
        if first.request.image is not None:
            return batch
        if self.batching_size is None or (first.request.width, first.request.height) != self.batching_size:
            return batch
        images = first.request.n
        for job in list(self._queue):
            if job.key == first.key and job.request.image is None and images + job.request.n <= self.max_batch:
                self._queue.remove(job)
                batch.append(job)
                images += job.request.n
        return batch

    def _call(self, batch: list[_Job]) -> list[list[bytes]]:
        """Run one pipeline call for ``batch`` (worker thread); one list of PNGs per job."""
        import torch

        live = [job for job in batch if not job.cancelled.is_set()]
        if not live:
            raise _Cancelled("every request of the batch was cancelled before it started")
        first = batch[0]
        prompts: list[str] = []
        negatives: list[str] = []
        generators: list[Any] = []
        for job in batch:
            seed = job.request.seed if job.request.seed is not None else random.randrange(2**31)
            for i in range(job.request.n):
                prompts.append(job.request.prompt)
                negatives.append(job.request.negative_prompt or "")
                generators.append(torch.Generator(device="cpu").manual_seed(seed + i))
        steps = first.steps
        edit = first.request.image is not None
        pipe = self.image_pipe if edit else self.pipe

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            # An edit runs only the last strength * steps steps; the pipeline knows how many (num_timesteps).
            total = int(getattr(pipe, "num_timesteps", 0) or steps)
            offset = 0
            for job in batch:
                job.progress(step + 1, total)
                _send_partials(pipe, job, step + 1, total, tensors.get("latents"), offset)
                offset += job.request.n
            if all(job.cancelled.is_set() for job in batch):
                raise _Cancelled(f"stopped after step {step + 1}/{total}: every request was cancelled")
            return tensors

        kwargs: dict[str, Any] = {
            "prompt": prompts,
            "num_inference_steps": steps,
            "generator": generators,
        }
        if edit:
            source = first.request.image.convert("RGB").resize((first.request.width, first.request.height))
            kwargs["image"] = [source] * len(prompts)
            if first.request.strength is not None:
                kwargs["strength"] = first.request.strength
        else:
            kwargs["width"] = first.request.width
            kwargs["height"] = first.request.height
        if any(negatives):
            kwargs["negative_prompt"] = negatives
        if first.request.guidance_scale is not None:
            kwargs["guidance_scale"] = first.request.guidance_scale
        if self._can_stop:
            kwargs["callback_on_step_end"] = on_step_end
        self.batches.append(len(prompts))
        with torch.inference_mode():
            try:
                result = pipe(**kwargs)
            except _Cancelled as exc:
                log.info("pipeline %s", exc)
                raise
        pngs = [_png(image) for image in result.images]
        out: list[list[bytes]] = []
        for job in batch:
            out.append(pngs[: job.request.n])
            pngs = pngs[job.request.n :]
        return out

    async def aclose(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner


def _image_to_image(pipe: Any) -> Any:
    """The image-to-image pipeline over ``pipe``'s components, or ``None`` when its family has none."""
    from diffusers import AutoPipelineForImage2Image

    try:
        image_pipe = AutoPipelineForImage2Image.from_pipe(pipe)
    except (ValueError, KeyError, TypeError) as exc:
        log.info("no image-to-image pipeline for %s: %s", type(pipe).__name__, exc)
        return None
    image_pipe.set_progress_bar_config(disable=True)
    return image_pipe


def _partial_steps(partials: int, total: int) -> list[int]:
    """The steps after which ``partials`` intermediate images are sent: evenly spaced, never the last step
    (whose image is the final one)."""
    steps = {round(total * (i + 1) / (partials + 1)) for i in range(partials)}
    return sorted(s for s in steps if 0 < s < total)


def _send_partials(pipe: Any, job: _Job, done: int, total: int, latents: Any, offset: int) -> None:
    """Decode ``job``'s slice of the current latents and hand each PNG to ``job.progress.partial``."""
    deliver = getattr(job.progress, "partial", None)
    wanted = _partial_steps(job.request.partial_images, total)
    if deliver is None or latents is None or done not in wanted or job.cancelled.is_set():
        return
    vae = pipe.vae
    mine = latents[offset : offset + job.request.n]
    decoded = vae.decode(mine / vae.config.scaling_factor, return_dict=False)[0]
    for index, image in enumerate(pipe.image_processor.postprocess(decoded, output_type="pil")):
        deliver(index, wanted.index(done), _png(image))


def _native_size(pipe: Any) -> tuple[int, int]:
    """The size the pipeline generates by default: the UNet's sample size times the VAE's scale factor."""
    unet = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    sample = getattr(getattr(unet, "config", None), "sample_size", None) or 64
    if isinstance(sample, list | tuple):
        sample = sample[0]
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    return int(sample) * scale, int(sample) * scale


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
