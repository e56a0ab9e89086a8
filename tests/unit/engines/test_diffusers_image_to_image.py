"""Image-to-image and streaming on the diffusers engine, in-process on the tiny random Stable Diffusion pipeline.

The image-to-image pipeline shares the loaded components (no second copy of the weights); an edit honours its
input image, strength and seed; the worker host's ``/v1/images/edits`` decodes the upload (a file that is not
an image is a 400 naming ``image``); ``stream: true`` answers OpenAI-shaped events (progress, partial images,
completed) on both routes.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("diffusers")

from xinfd_engines import diffusers as diffusers_engine
from xinfd_engines.diffusers_model import DiffusersImageModel, _partial_steps

from tests.unit.engines.test_diffusers import SPEC, pixels, replica
from tests.unit.engines.tiny_diffusion import NATIVE_SIZE, build_tiny_sd
from xinfd.errors import InvalidRequestError
from xinfd.types import ImageRequest
from xinfd.worker.host import make_worker_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd-i2i") / "pipe")


@pytest.fixture
def model(tiny_sd: Path) -> Iterator[DiffusersImageModel]:
    loaded = diffusers_engine.ENGINE.load(SPEC, replica(tiny_sd, num_inference_steps=4))
    assert isinstance(loaded, DiffusersImageModel)
    yield loaded


def png_of(color: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def source(color: tuple[int, int, int]) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(png_of(color)))


def edit(image: Any, *, seed: int = 3, strength: float | None = 0.5, steps: int = 4) -> ImageRequest:
    return ImageRequest(
        request_id="e1",
        prompt="the quick brown fox",
        width=NATIVE_SIZE[0],
        height=NATIVE_SIZE[1],
        seed=seed,
        num_inference_steps=steps,
        image=image,
        strength=strength,
    )


def test_the_image_to_image_pipeline_shares_the_loaded_components(model: DiffusersImageModel) -> None:
    assert model.accepts_image
    assert type(model.image_pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    for part in ("unet", "vae", "text_encoder", "tokenizer"):
        assert getattr(model.image_pipe, part) is getattr(model.pipe, part), part


async def test_an_edit_follows_its_image_strength_and_seed(model: DiffusersImageModel) -> None:
    steps: list[tuple[int, int]] = []
    (red,) = await model.generate_images(edit(source((250, 0, 0))), lambda d, t: steps.append((d, t)))
    assert steps[-1] == (2, 2)  # strength 0.5 of 4 steps: the pipeline runs the last 2
    (again,) = await model.generate_images(edit(source((250, 0, 0))), lambda d, t: None)
    assert again == red  # the seed is honoured
    (blue,) = await model.generate_images(edit(source((0, 0, 250))), lambda d, t: None)
    # A low strength keeps the input's colours: the red input gives a redder image than the blue one.
    r, b = pixels(red), pixels(blue)
    assert r[..., 0].mean() - r[..., 2].mean() > b[..., 0].mean() - b[..., 2].mean()
    assert model.batches[-3:] == [1, 1, 1]


async def test_a_strength_that_runs_no_step_is_refused(model: DiffusersImageModel) -> None:
    with pytest.raises(InvalidRequestError, match="strength") as refused:
        await model.generate_images(edit(source((1, 2, 3)), strength=0.1, steps=4), lambda d, t: None)
    assert refused.value.param == "strength"


def test_partial_images_are_spread_over_the_steps_and_never_the_last() -> None:
    assert _partial_steps(1, 4) == [2]
    assert _partial_steps(3, 8) == [2, 4, 6]
    assert _partial_steps(3, 2) == [1]
    assert _partial_steps(0, 10) == []


async def worker(model: DiffusersImageModel, aiohttp_client: Any) -> Any:
    app = make_worker_app(
        model,
        model_uid="tiny-sd",
        model_name="tiny-sd",
        context_length=77,
        max_tokens_cap=None,
        replica_label="tiny-sd-r0",
    )
    return await aiohttp_client(app)


async def test_worker_edits_route_decodes_the_upload(model: DiffusersImageModel, aiohttp_client: Any) -> None:
    client = await worker(model, aiohttp_client)
    image = base64.b64encode(png_of((0, 200, 0))).decode()
    ok = await client.post(
        "/v1/images/edits", json={"prompt": "a fox", "image": image, "n": 2, "kwargs": '{"strength": 0.75, "seed": 2}'}
    )
    assert ok.status == 200, await ok.text()
    data = (await ok.json())["data"]
    assert len(data) == 2 and all(pixels(base64.b64decode(d["b64_json"])) is not None for d in data)
    broken = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"not really a png").decode()
    bad = await client.post("/v1/images/edits", json={"prompt": "a fox", "image": broken})
    assert bad.status == 400
    error = (await bad.json())["error"]
    assert error["param"] == "image" and "decoded" in error["message"]
    missing = await client.post("/v1/images/edits", json={"prompt": "a fox"})
    assert missing.status == 400 and (await missing.json())["error"]["param"] == "image"


def events(raw: str) -> list[tuple[str | None, Any]]:
    """SSE frames as (event name, data); ``[DONE]`` as (None, "[DONE]")."""
    out: list[tuple[str | None, Any]] = []
    for frame in raw.strip().split("\n\n"):
        name = None
        data = ""
        for line in frame.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        out.append((name, data if data == "[DONE]" else json.loads(data)))
    return out


async def test_stream_sends_progress_partial_and_completed_events(
    model: DiffusersImageModel, aiohttp_client: Any
) -> None:
    client = await worker(model, aiohttp_client)
    answer = await client.post(
        "/v1/images/generations", json={"prompt": "a fox", "n": 2, "stream": True, "partial_images": 1, "seed": 4}
    )
    assert answer.status == 200 and answer.content_type == "text/event-stream"
    frames = events(await answer.text())
    names = [name for name, _ in frames]
    assert names[-1] is None and frames[-1][1] == "[DONE]"
    progress = [data for name, data in frames if name == "image_generation.progress"]
    assert progress and progress[-1]["step"] == progress[-1]["total_steps"] == 4
    assert all(data["type"] == name for name, data in frames[:-1])
    partials = [data for name, data in frames if name == "image_generation.partial_image"]
    assert sorted(p["index"] for p in partials) == [0, 1] and {p["partial_image_index"] for p in partials} == {0}
    pixels(base64.b64decode(partials[0]["b64_json"]))
    completed = [data for name, data in frames if name == "image_generation.completed"]
    assert [c["index"] for c in completed] == [0, 1] and completed[0]["size"] == "32x32"
    assert names.index("image_generation.completed") > max(i for i, n in enumerate(names) if n and "partial" in n)
    plain = await client.post(
        "/v1/images/generations", json={"prompt": "a fox", "n": 2, "seed": 4, "response_format": "b64_json"}
    )
    assert [d["b64_json"] for d in (await plain.json())["data"]] == [c["b64_json"] for c in completed]

    image = base64.b64encode(png_of((10, 20, 30))).decode()
    edited = await client.post("/v1/images/edits", json={"prompt": "a fox", "image": image, "stream": True})
    edit_names = [name for name, _ in events(await edited.text())]
    assert "image_edit.progress" in edit_names and edit_names.count("image_edit.completed") == 1
