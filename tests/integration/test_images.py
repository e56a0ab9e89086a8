"""Image generation through the real daemon, on a tiny random Stable Diffusion pipeline built in the test:
the openai SDK (``client.images.generate``: ``b64_json`` and ``url``), Xinference's client
(``RESTfulClient(...).get_model(uid).text_to_image``), a wrong size (400 naming the allowed ones), links that
expire, a client disconnect that stops the denoising steps, and the image metrics."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import time
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


def png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


@pytest.fixture
def image_daemon(make_daemon: Any, tmp_path: Path) -> Daemon:
    daemon: Daemon = make_daemon(env={"XINFD_IMAGE_URL_LIFETIME": "3"}).start()
    folder = build_tiny_sd(tmp_path / "tiny-sd")
    spec = {"name": "tiny-sd", "abilities": ["image"], "engines": ["diffusers"], "context_length": 77,
            "extra": {"model_path": str(folder), "sizes": ["32x32", "64x64"], "num_inference_steps": 2}}
    spec_file = tmp_path / "tiny-sd.json"
    spec_file.write_text(json.dumps(spec))
    daemon.xinfctl("register", "--file", str(spec_file))
    daemon.xinfctl("launch", "-n", "tiny-sd", "-e", "diffusers", timeout=300)
    return daemon


def test_openai_sdk_b64_url_and_wrong_size(image_daemon: Daemon) -> None:
    api = openai.OpenAI(base_url=image_daemon.endpoint + "/v1", api_key="none", max_retries=0, timeout=120)
    b64 = api.images.generate(model="tiny-sd", prompt="a fox", n=2, size="32x32",  # type: ignore[arg-type]
                              response_format="b64_json", extra_body={"seed": 3})
    assert b64.data is not None and len(b64.data) == 2
    assert all(png_size(base64.b64decode(item.b64_json or "")) == (32, 32) for item in b64.data)
    again = api.images.generate(model="tiny-sd", prompt="a fox", size="32x32",  # type: ignore[arg-type]
                                response_format="b64_json", extra_body={"seed": 3})
    assert again.data is not None and again.data[0].b64_json == b64.data[0].b64_json  # the seed is honoured

    linked = api.images.generate(model="tiny-sd", prompt="a fox", size="64x64",  # type: ignore[arg-type]
                                 response_format="url")
    assert linked.data is not None and linked.data[0].url
    url = linked.data[0].url
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.headers["Content-Type"] == "image/png"
        assert png_size(answer.read()) == (64, 64)
    name = url.rsplit("/", 1)[1]
    assert (image_daemon.home / "images" / name).is_file()

    with pytest.raises(openai.BadRequestError) as refused:
        api.images.generate(model="tiny-sd", prompt="a fox", size="1024x1024")  # type: ignore[arg-type]
    assert "32x32" in str(refused.value) and "64x64" in str(refused.value)
    with pytest.raises(openai.BadRequestError, match="'n'"):
        api.images.generate(model="tiny-sd", prompt="a fox", n=11)

    # The link expires (lifetime 3 s): a 404, and the sweeper or the next fetch removes nothing it should keep.
    time.sleep(3.5)
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(url, timeout=10)
    assert gone.value.code == 404
    gone.value.close()
    wait_for(lambda: not (image_daemon.home / "images" / name).exists(), timeout=10)

    with urllib.request.urlopen(image_daemon.endpoint + "/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    assert re.search(r'xinfd_images_generated_total\{model="tiny-sd"\} 4\.0', metrics), metrics
    assert 'xinfd_image_seconds_per_image_count{model="tiny-sd"} 3.0' in metrics


def test_xinference_client_text_to_image(image_daemon: Daemon) -> None:
    from xinference_client import RESTfulClient

    model = RESTfulClient(image_daemon.endpoint).get_model("tiny-sd")
    assert type(model).__name__ == "RESTfulImageModelHandle"
    result: Any = model.text_to_image("a fox", n=1, size="32*32", response_format="b64_json", seed=5,
                                      num_inference_steps=1)
    assert png_size(base64.b64decode(result["data"][0]["b64_json"])) == (32, 32)
    linked: Any = model.text_to_image("a fox", size="32*32")  # Xinference's default answer is a url
    with urllib.request.urlopen(linked["data"][0]["url"], timeout=10) as answer:
        assert png_size(answer.read()) == (32, 32)
    with pytest.raises(RuntimeError, match="allowed sizes"):
        model.text_to_image("a fox", size="1024*1024")


def test_disconnect_stops_the_steps(image_daemon: Daemon) -> None:
    host, port = image_daemon.endpoint.removeprefix("http://").split(":")
    body = json.dumps({"model": "tiny-sd", "prompt": "a fox", "size": "32x32", "num_inference_steps": 500,
                       "response_format": "b64_json"}).encode()
    log = image_daemon.home / "logs" / "tiny-sd-r0.log"
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_for(lambda: re.search(r"step \d+/500", log.read_text()), timeout=60)
    line = wait_for(lambda: re.search(r"image generation cancelled after (\d+) step", log.read_text()), timeout=30)
    assert int(line.group(1)) < 500
    assert wait_for(lambda: re.search(r"pipeline stopped after step (\d+)/500", log.read_text()), timeout=30)
