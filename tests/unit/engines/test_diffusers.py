"""The diffusers engine in-process, on a tiny random Stable Diffusion pipeline built in the test (no hub).

Covers the engine object (dependencies, options, availability), the ``ImageModel`` it loads (PNG output,
seeds, batching by size, cancellation between steps) and the worker host's images route around it.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("diffusers")

from xinfd_engines import diffusers as diffusers_engine
from xinfd_engines.diffusers_model import DiffusersImageModel

from tests.unit.engines.tiny_diffusion import NATIVE_SIZE, build_tiny_sd
from xinfd.plugins import make_plugin_manager
from xinfd.types import ImageModel, ImageRequest, ModelSpec, Platform, ReplicaContext, ReplicaSettings
from xinfd.worker.host import make_worker_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

SPEC = ModelSpec(name="tiny-sd", abilities=("image",), engines=("diffusers",), context_length=77)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "pipe")


def replica(folder: Path, *, batching: str | None = None, **options: Any) -> ReplicaContext:
    return ReplicaContext(
        model_uid="tiny-sd", model_name="tiny-sd", engine="diffusers", replica_index=0, socket_path="/nonexistent",
        python="python", options={"model_path": str(folder), "num_inference_steps": 2, **options},
        settings=ReplicaSettings(text_to_image_batching_size=batching, batch_size=8),
    )


@pytest.fixture
def model(tiny_sd: Path) -> Iterator[DiffusersImageModel]:
    loaded = diffusers_engine.ENGINE.load(SPEC, replica(tiny_sd))
    assert isinstance(loaded, DiffusersImageModel)
    yield loaded


def request(n: int = 1, seed: int | None = 7, steps: int | None = None, size: tuple[int, int] = NATIVE_SIZE,
            request_id: str = "r1") -> ImageRequest:
    return ImageRequest(request_id=request_id, prompt="the quick brown fox", n=n, width=size[0], height=size[1],
                        seed=seed, num_inference_steps=steps)


def pixels(png: bytes) -> Any:
    import numpy
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == NATIVE_SIZE
    return numpy.asarray(image.convert("RGB"), dtype=numpy.int16)


def test_engine_object_and_registration() -> None:
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[diffusers_engine], env={})
    assert not plugins.failures
    engine = plugins.engines["diffusers"]
    assert engine.abilities == ("image",) and engine.loads_weights_folder
    deps = engine.dependencies()
    assert any(d.startswith("diffusers") for d in deps) and any(d.startswith("torch") for d in deps)
    cpu = Platform(system="Linux", machine="x86_64", python_version="3.11.9")
    assert engine.availability(SPEC, cpu).available  # CPU allowed (slow)
    other = ModelSpec(name="x", abilities=("chat",), engines=("transformers",))
    assert not engine.availability(other, cpu).available


@pytest.mark.parametrize(
    ("options", "words"),
    [({"sizes": "512"}, "sizes"), ({"num_inference_steps": 0}, "num_inference_steps"),
     ({"num_inference_steps": "many"}, "num_inference_steps")],
)
def test_bad_launch_options_name_the_option(tmp_path: Path, options: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        diffusers_engine.ENGINE.check_launch(SPEC, replica(tmp_path, **options))


def test_sizes_come_from_the_launch_option_or_the_spec(tmp_path: Path) -> None:
    spec = ModelSpec(name="s", abilities=("image",), engines=("diffusers",), extra={"sizes": ["512x512", "768*768"]})
    assert diffusers_engine.sizes_option(spec, {}) == ((512, 512), (768, 768))
    assert diffusers_engine.sizes_option(spec, {"sizes": "64x64,32x32"}) == ((64, 64), (32, 32))
    assert diffusers_engine.sizes_option(SPEC, {}) is None


async def test_generates_pngs_reproducibly_with_a_seed(model: DiffusersImageModel) -> None:
    assert isinstance(model, ImageModel)
    assert model.sizes == (NATIVE_SIZE,)  # the pipeline's native size when the family names none
    steps: list[tuple[int, int]] = []
    first = await model.generate_images(request(n=2), lambda done, total: steps.append((done, total)))
    assert len(first) == 2 and first[0] != first[1]  # image i uses seed + i
    assert steps[-1] == (2, 2)
    again = await model.generate_images(request(n=1), lambda done, total: None)
    assert again[0] == first[0]
    pixels(first[0])


async def test_same_size_requests_arriving_together_run_as_one_batch(tiny_sd: Path) -> None:
    batched = diffusers_engine.ENGINE.load(SPEC, replica(tiny_sd, batching="32*32"))
    assert isinstance(batched, DiffusersImageModel)
    together = await asyncio.gather(*(batched.generate_images(request(seed=i, request_id=f"r{i}"), _ignore)
                                      for i in range(4)))
    # All four were waiting when the runner took its first batch: one pipeline call for the four images.
    assert batched.batches == [4]
    # One that arrives while a batch runs waits for the next call, with the others that arrived meanwhile.
    first = asyncio.ensure_future(batched.generate_images(request(seed=0, steps=100), _ignore))
    await asyncio.sleep(0.05)
    later = await asyncio.gather(*(batched.generate_images(request(seed=i), _ignore) for i in range(2)))
    await first
    assert batched.batches[1:] == [1, 2] and len(later) == 2
    alone = diffusers_engine.ENGINE.load(SPEC, replica(tiny_sd))
    assert isinstance(alone, DiffusersImageModel)
    for i in range(4):
        (single,) = await alone.generate_images(request(seed=i), _ignore)
        # Per-image generators: the same image alone or batched (up to float rounding of the batched matmuls).
        assert abs(pixels(single) - pixels(together[i][0])).max() <= 2
    assert alone.batches == [1, 1, 1, 1]


async def test_other_sizes_are_not_batched(tiny_sd: Path) -> None:
    batched = diffusers_engine.ENGINE.load(SPEC, replica(tiny_sd, batching="64*64", sizes="32x32"))
    assert isinstance(batched, DiffusersImageModel)
    await asyncio.gather(*(batched.generate_images(request(request_id=f"r{i}"), _ignore) for i in range(3)))
    assert batched.batches == [1, 1, 1]


async def test_cancelling_stops_the_pipeline_between_steps(model: DiffusersImageModel) -> None:
    seen: list[int] = []
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def progress(done: int, total: int) -> None:
        seen.append(done)
        loop.call_soon_threadsafe(started.set)

    task = asyncio.ensure_future(model.generate_images(request(steps=400), progress))
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The runner serves one pipeline call at a time: the next request completes only after the cancelled one
    # stopped, so by then ``seen`` holds every step the cancelled request ran.
    await model.generate_images(request(), _ignore)
    assert max(seen) < 400


async def test_worker_route_answers_b64_pngs_and_refuses_other_sizes(model: DiffusersImageModel,
                                                                    aiohttp_client: Any) -> None:
    app = make_worker_app(model, model_uid="tiny-sd", model_name="tiny-sd", context_length=77, max_tokens_cap=None,
                          replica_label="tiny-sd-r0")
    client = await aiohttp_client(app)
    ok = await client.post("/v1/images/generations", json={"prompt": "a fox", "n": 2, "size": "32x32",
                                                           "response_format": "b64_json", "seed": 1})
    assert ok.status == 200, await ok.text()
    data = (await ok.json())["data"]
    assert len(data) == 2
    pixels(base64.b64decode(data[0]["b64_json"]))
    # Xinference's client: size as W*H and pipeline arguments in a JSON string.
    xinf = await client.post("/v1/images/generations", json={"prompt": "a fox", "size": "32*32",
                                                             "kwargs": '{"seed": 1, "num_inference_steps": 1}'})
    assert xinf.status == 200
    wrong = await client.post("/v1/images/generations", json={"prompt": "a fox", "size": "512x512"})
    assert wrong.status == 400
    error = (await wrong.json())["error"]
    assert error["param"] == "size" and "32x32" in error["message"]
    chat = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert chat.status == 404


def _ignore(done: int, total: int) -> None:
    pass
