"""Image-to-image and streaming through the real daemon, with API keys on, on the tiny random Stable Diffusion
pipeline built in the test: the openai SDK (``images.edit``, ``images.generate(stream=True)``), Xinference's
client (``image_to_image``), the upload refusals (mask, not an image, too large), keyless ``url`` links while
everything else needs the key, and a client that leaves mid-stream stopping the denoising steps."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("diffusers")

import openai

from tests.integration.conftest import Daemon, wait_for
from tests.unit.engines.tiny_diffusion import build_tiny_sd

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

KEY = "sk-images-inference"


def png(color: tuple[int, int, int], size: tuple[int, int] = (40, 40)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


@pytest.fixture
def keyed_daemon(make_daemon: Any, tmp_path: Path) -> Daemon:
    daemon: Daemon = make_daemon(env={"XINFD_API_KEYS": KEY}).start()
    folder = build_tiny_sd(tmp_path / "tiny-sd")
    spec = {
        "name": "tiny-sd",
        "abilities": ["image"],
        "engines": ["diffusers"],
        "context_length": 77,
        "extra": {"model_path": str(folder), "sizes": ["32x32", "64x64"], "num_inference_steps": 4},
    }
    spec_file = tmp_path / "tiny-sd.json"
    spec_file.write_text(json.dumps(spec))
    daemon.xinfctl("register", "--file", str(spec_file))
    daemon.xinfctl("launch", "-n", "tiny-sd", "-e", "diffusers", timeout=300)
    return daemon


def sdk(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.endpoint + "/v1", api_key=KEY, max_retries=0, timeout=120)


def test_edits_with_the_sdk_and_xinference_client(keyed_daemon: Daemon) -> None:
    api = sdk(keyed_daemon)
    edited = api.images.edit(
        model="tiny-sd",
        image=("in.png", png((200, 30, 30)), "image/png"),
        prompt="a fox",
        n=2,
        size="32x32",
        response_format="b64_json",  # type: ignore[arg-type]
        extra_body={"seed": 3, "strength": 0.5},
    )
    assert edited.data is not None and len(edited.data) == 2
    assert all(png_size(base64.b64decode(d.b64_json or "")) == (32, 32) for d in edited.data)

    # A url answer is a link that works without the key (its random name is the permission) ...
    linked = api.images.edit(
        model="tiny-sd",
        image=("in.png", png((0, 90, 0)), "image/png"),
        prompt="a fox",
        size="64x64",
        response_format="url",
    )  # type: ignore[arg-type]
    assert linked.data is not None and linked.data[0].url
    with urllib.request.urlopen(linked.data[0].url, timeout=10) as answer:
        assert png_size(answer.read()) == (64, 64)
    # ... while generating still needs it, and a made-up link is a 404, not a way to probe for keys.
    body = json.dumps({"model": "tiny-sd", "prompt": "a fox"}).encode()
    for url, data, status in (
        (keyed_daemon.endpoint + "/v1/images/generations", body, 401),
        (keyed_daemon.endpoint + "/v1/images/files/" + "0" * 32 + ".png", None, 404),
    ):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10)
        assert refused.value.code == status
        refused.value.close()

    from xinference_client import RESTfulClient

    model = RESTfulClient(keyed_daemon.endpoint, api_key=KEY).get_model("tiny-sd")
    result: Any = model.image_to_image(
        png((10, 10, 200)), "a fox", n=1, size="32*32", response_format="b64_json", strength=0.75, seed=1
    )
    assert png_size(base64.b64decode(result["data"][0]["b64_json"])) == (32, 32)
    with pytest.raises(RuntimeError, match="allowed sizes"):
        model.image_to_image(png((1, 1, 1)), "a fox", size="1024*1024")

    import httpx

    # Multipart is taken on the upload routes only: anywhere else a form body is still a 415.
    form = httpx.post(
        keyed_daemon.endpoint + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        data={"model": "tiny-sd"},
        files={"image": ("in.png", png((1, 1, 1)))},
        timeout=60,
    )
    assert form.status_code == 415


BAD_UPLOADS: list[tuple[dict[str, Any], str, str]] = [
    ({"image": ("in.png", png((1, 2, 3))), "mask": ("m.png", png((0, 0, 0)))}, "mask", "inpainting"),
    ({"image": ("in.txt", b"hello, not a picture")}, "image", "not an image"),
    ({"image": ("in.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64)}, "image", "decoded"),
    ({"image": ("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (7 * 1024 * 1024))}, "image", "limit"),
    ({"picture": ("in.txt", b"a caption")}, "image", "exactly one"),
]


def test_bad_uploads_are_400s_naming_the_field(keyed_daemon: Daemon) -> None:
    import httpx

    for files, param, words in BAD_UPLOADS:
        answer = httpx.post(
            keyed_daemon.endpoint + "/v1/images/edits",
            headers={"Authorization": f"Bearer {KEY}"},
            data={"model": "tiny-sd", "prompt": "a fox"},
            files=files,
            timeout=60,
        )
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["param"] == param and words in error["message"], error
        assert answer.json()["detail"] == error["message"]  # what Xinference's client shows


def test_streams_with_the_sdk(keyed_daemon: Daemon) -> None:
    api = sdk(keyed_daemon)
    kinds: list[str] = []
    completed: list[Any] = []
    for event in api.images.generate(
        model="tiny-sd",
        prompt="a fox",
        size="32x32",
        stream=True,  # type: ignore[arg-type]
        partial_images=1,
        n=1,
    ):
        kinds.append(event.type)
        if event.type == "image_generation.completed":
            completed.append(event)
    assert kinds[0] == "image_generation.progress" and kinds[-1] == "image_generation.completed"
    assert "image_generation.partial_image" in kinds
    assert len(completed) == 1 and png_size(base64.b64decode(completed[0].b64_json)) == (32, 32)

    edit_kinds = [
        event.type
        for event in api.images.edit(
            model="tiny-sd", image=("in.png", png((5, 5, 5)), "image/png"), prompt="a fox", size="32x32", stream=True
        )
    ]  # type: ignore[arg-type]
    assert edit_kinds[-1] == "image_edit.completed" and "image_edit.progress" in edit_kinds
    # Streamed images count in the image metrics as whole answers do: one generated, one edited.
    scrape = urllib.request.Request(keyed_daemon.endpoint + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(scrape, timeout=10) as answer:
        metrics = answer.read().decode()
    assert re.search(r'xinfd_images_generated_total\{model="tiny-sd"\} 2\.0', metrics), metrics


def test_leaving_mid_stream_stops_the_steps(keyed_daemon: Daemon) -> None:
    host, port = keyed_daemon.endpoint.removeprefix("http://").split(":")
    body = json.dumps(
        {"model": "tiny-sd", "prompt": "a fox", "size": "32x32", "num_inference_steps": 500, "stream": True}
    ).encode()
    log = keyed_daemon.home / "logs" / "tiny-sd-r0.log"
    with socket.create_connection((host, int(port)), timeout=60) as conn:
        conn.sendall(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while b"image_generation.progress" not in received:
            chunk = conn.recv(65536)
            assert chunk, received
            received += chunk
    line = wait_for(lambda: re.search(r"image stream cancelled after (\d+) step", log.read_text()), timeout=30)
    assert int(line.group(1)) < 500
    assert wait_for(lambda: re.search(r"pipeline stopped after step (\d+)/500", log.read_text()), timeout=30)
