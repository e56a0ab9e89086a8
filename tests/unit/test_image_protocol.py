"""``/v1/images/generations`` validation (``xinfd.image_protocol``): OpenAI's fields and Xinference's extras."""

from __future__ import annotations

from typing import Any

import pytest

from xinfd.errors import InvalidRequestError
from xinfd.image_protocol import check_size, images_body, parse_image_request, parse_size


def test_openai_shape_with_defaults() -> None:
    parsed = parse_image_request({"prompt": "a fox"})
    assert (parsed.n, parsed.size, parsed.response_format, parsed.seed) == (1, None, "url", None)
    full = parse_image_request({"prompt": "a fox", "n": 3, "size": "512x768", "response_format": "b64_json",
                                "seed": 9})
    assert (full.n, full.size, full.response_format, full.seed) == (3, (512, 768), "b64_json", 9)


def test_xinference_size_and_kwargs_string() -> None:
    parsed = parse_image_request({"prompt": "a fox", "size": "1024*1024", "kwargs": '{"seed": 4, '
                                  '"negative_prompt": "blur", "num_inference_steps": 20, "guidance_scale": 7.5}'})
    assert parsed.size == (1024, 1024)
    assert (parsed.seed, parsed.negative_prompt, parsed.num_inference_steps, parsed.guidance_scale) == (
        4, "blur", 20, 7.5)
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
