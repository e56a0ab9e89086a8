"""Image request validation (``xinfd.image_protocol``): OpenAI's fields and Xinference's extras, edits' uploads
and form fields, and the stream events' shape."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from xinfd.errors import InvalidRequestError
from xinfd.image_protocol import (
    MAX_IMAGE_BYTES,
    NO_USAGE,
    check_image_upload,
    check_size,
    form_body,
    image_event_fields,
    images_body,
    parse_image_request,
    parse_size,
    stream_event,
)


def test_openai_shape_with_defaults() -> None:
    parsed = parse_image_request({"prompt": "a fox"})
    assert (parsed.n, parsed.size, parsed.response_format, parsed.seed) == (1, None, "url", None)
    full = parse_image_request({"prompt": "a fox", "n": 3, "size": "512x768", "response_format": "b64_json", "seed": 9})
    assert (full.n, full.size, full.response_format, full.seed) == (3, (512, 768), "b64_json", 9)


def test_xinference_size_and_kwargs_string() -> None:
    parsed = parse_image_request(
        {
            "prompt": "a fox",
            "size": "1024*1024",
            "kwargs": '{"seed": 4, "negative_prompt": "blur", "num_inference_steps": 20, "guidance_scale": 7.5}',
        }
    )
    assert parsed.size == (1024, 1024)
    assert (parsed.seed, parsed.negative_prompt, parsed.num_inference_steps, parsed.guidance_scale) == (
        4,
        "blur",
        20,
        7.5,
    )
    assert parse_image_request({"prompt": "x", "kwargs": "{}"}).seed is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": "  "}, "prompt"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "n": 11}, "n"),
        ({"prompt": "x", "n": True}, "n"),
        ({"prompt": "x", "size": "big"}, "size"),
        ({"prompt": "x", "size": "0x512"}, "size"),
        ({"prompt": "x", "response_format": "png"}, "response_format"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "kwargs": "not json"}, "kwargs"),
        ({"prompt": "x", "kwargs": '{"strength": 1}'}, "kwargs"),
        ({"prompt": "x", "kwargs": '{"num_inference_steps": 0}'}, "num_inference_steps"),
        ({"prompt": "x", "guidance_scale": "high"}, "guidance_scale"),
        ({"prompt": "x", "negative_prompt": 3}, "negative_prompt"),
    ],
)
def test_bad_fields_are_400s_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        parse_image_request(body)
    assert refused.value.param == param and refused.value.status == 400


def test_size_outside_the_models_sizes_names_the_allowed_ones() -> None:
    check_size((512, 512), [(512, 512), (768, 768)])
    with pytest.raises(InvalidRequestError, match="allowed sizes: 512x512, 768x768") as refused:
        check_size(parse_size("1024*1024"), [(512, 512), (768, 768)])
    assert refused.value.param == "size"


def test_images_body_is_openais_shape() -> None:
    assert images_body(["QUJD"], created=5) == {"created": 5, "data": [{"b64_json": "QUJD", "revised_prompt": None}]}


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


def test_stream_and_partial_images_are_checked() -> None:
    parsed = parse_image_request({"prompt": "x", "stream": True, "partial_images": 2})
    assert (parsed.stream, parsed.partial_images) == (True, 2)
    for body, param in (
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": "x", "partial_images": 4}, "partial_images"),
    ):
        with pytest.raises(InvalidRequestError) as refused:
            parse_image_request(body)
        assert refused.value.param == param


def test_an_edit_body_carries_its_image_and_strength() -> None:
    body = {"prompt": "x", "image": base64.b64encode(PNG).decode(), "kwargs": '{"strength": 0.3}'}
    parsed = parse_image_request(body, edit=True)
    assert parsed.image == PNG and parsed.strength == 0.3
    with pytest.raises(InvalidRequestError) as no_strength_in_generations:
        parse_image_request({"prompt": "x", "kwargs": '{"strength": 0.3}'})
    assert no_strength_in_generations.value.param == "kwargs"
    for bad, param in (
        ({"prompt": "x"}, "image"),
        ({"prompt": "x", "image": "%%%"}, "image"),
        ({**body, "kwargs": '{"strength": 1.5}'}, "strength"),
    ):
        with pytest.raises(InvalidRequestError) as refused:
            parse_image_request(bad, edit=True)
        assert refused.value.param == param


@pytest.mark.parametrize(
    ("data", "words"),
    [(b"", "empty"), (b"GIF8" + b"\0" * 10, "not an image"), (b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_IMAGE_BYTES, "limit")],
)
def test_uploads_are_checked_before_a_replica_sees_them(data: bytes, words: str) -> None:
    with pytest.raises(InvalidRequestError, match=words) as refused:
        check_image_upload(data)
    assert refused.value.param == "image"


def test_uploads_of_each_kind_pass_by_their_signature() -> None:
    for data in (PNG, b"\xff\xd8\xff\xe0rest", b"RIFF\0\0\0\0WEBPVP8 ", b"GIF89a..."):
        check_image_upload(data)


def test_form_fields_become_a_json_body() -> None:
    body = form_body(
        {
            "model": "m",
            "prompt": "a fox",
            "n": "2",
            "stream": "true",
            "strength": "0.5",
            "negative_prompt": "",
            "kwargs": '{"seed": 1}',
        }
    )
    assert body == {"model": "m", "prompt": "a fox", "n": 2, "stream": True, "strength": 0.5, "kwargs": '{"seed": 1}'}
    with pytest.raises(InvalidRequestError) as refused:
        form_body({"n": "two"})
    assert refused.value.param == "n"


def test_stream_events_are_openais_shape() -> None:
    frame = stream_event("image_edit", "completed", {"b64_json": "QUJD", "usage": NO_USAGE})
    name, data = frame.decode().removesuffix("\n\n").split("\n")
    assert name == "event: image_edit.completed"
    assert json.loads(data.removeprefix("data: ")) == {
        "type": "image_edit.completed",
        "b64_json": "QUJD",
        "usage": NO_USAGE,
    }
    fields = image_event_fields("QUJD", (32, 48), created=7)
    assert fields == {
        "b64_json": "QUJD",
        "created_at": 7,
        "size": "32x48",
        "quality": "auto",
        "background": "opaque",
        "output_format": "png",
    }
