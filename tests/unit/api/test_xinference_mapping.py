"""Xinference's launch body, field by field, as xinfd's LaunchRequest; and what cannot be honoured, refused
naming the field. Also the family-weights check (format, size, quantization) and the describe/registration
shapes (model_type for LLM, embedding and rerank families)."""

from __future__ import annotations

from typing import Any

import pytest

from xinfd.api.xinference_mapping import launch_request, model_ability, model_type
from xinfd.api.xinference_registry import registration_rows, spec_json
from xinfd.errors import InvalidRequestError, UnknownModelError
from xinfd.supervisor.launch_request import LaunchRequest
from xinfd.supervisor.variant import Variant, check_variant, default_variant, launched_variant
from xinfd.types import ModelSpec

QWEN = ModelSpec(
    name="qwen2.5-instruct", abilities=("chat", "generate"), engines=("vllm", "transformers", "llama.cpp"),
    extra={
        "model_id": "Qwen/Qwen2.5-7B-Instruct",
        "formats": [
            {"format": "pytorch", "sizes_b": [0.5, 7], "quantizations": ["none"],
             "sources": {"huggingface": "Qwen/Qwen2.5-{size}B-Instruct"}},
            {"format": "gguf", "sizes_b": [7], "quantizations": ["Q4_K_M", "Q8_0"],
             "sources": {"huggingface": "Qwen/Qwen2.5-{size}B-Instruct-GGUF"}},
        ],
    },
)
MINILM = ModelSpec(name="minilm", abilities=("embed",), engines=("sentence_transformers",),
                   extra={"dimensions": 384, "formats": [{"format": "pytorch", "quantizations": ["none"]}]})
ECHO = ModelSpec(name="echo", abilities=("chat", "generate"), engines=("echo",))
FAMILIES = {s.name: s for s in (QWEN, MINILM, ECHO)}

# What RESTfulClient.launch_model sends with only model_name given: every key, most of them null.
CLIENT_DEFAULTS: dict[str, Any] = {
    "model_uid": None, "model_name": "echo", "model_engine": None, "peft_model_config": None, "model_type": "LLM",
    "model_size_in_billions": None, "model_format": None, "quantization": None, "replica": 1, "n_worker": 1,
    "n_gpu": "auto", "request_limits": None, "worker_ip": None, "gpu_idx": None, "replica_config": None,
    "model_path": None, "enable_thinking": None, "enable_virtual_env": None, "virtual_env_packages": None,
    "virtual_env_find_links": None, "envs": None,
}


def mapped(**fields: Any) -> LaunchRequest:
    return launch_request({**CLIENT_DEFAULTS, **fields}, FAMILIES, model_src="huggingface")


def refused(field: str, **fields: Any) -> str:
    with pytest.raises(InvalidRequestError) as info:
        mapped(**fields)
    assert info.value.param == field, info.value
    return str(info.value)


def test_the_clients_defaults_are_a_plain_launch() -> None:
    assert mapped() == LaunchRequest(model_name="echo")


def test_every_mapped_field() -> None:
    request = mapped(
        model_uid="q", model_name="qwen2.5-instruct", model_type="LLM", model_engine="vLLM",
        model_format="pytorch", model_size_in_billions=7, quantization="none", replica=2, n_gpu=1,
        enable_virtual_env=True, virtual_env_packages=["transformers==4.51.0"], envs={"HF_TOKEN": "x"},
        model_path=None, enable_thinking=False, max_model_len=4096, download_hub="huggingface",
        virtual_env_find_links=[],
    )
    assert request == LaunchRequest(
        model_uid="q", model_name="qwen2.5-instruct", model_engine="vllm", model_format="pytorch",
        model_size_in_billions=7.0, quantization="none", replica=2, n_gpu=1, enable_virtual_env=True,
        virtual_env_packages=("transformers==4.51.0",), env={"HF_TOKEN": "x"},
        options={"enable_thinking": False, "max_model_len": 4096},
    )
    assert mapped(gpu_idx=1).gpu_idx == (1,)
    assert mapped(gpu_idx=[0, 1]).gpu_idx == (0, 1)
    assert mapped(n_gpu=None).n_gpu == 0  # Xinference: null is CPU only
    assert mapped(model_path="/w").options == {"model_path": "/w"}
    assert mapped(model_size_in_billions="0_5").model_size_in_billions == 0.5
    assert mapped(model_name="minilm", model_type="embedding").model_name == "minilm"


@pytest.mark.parametrize(
    ("field", "fields", "words"),
    [
        ("model_name", {"model_name": None}, "required"),
        ("model_type", {"model_type": "audio"}, "not served"),
        ("model_type", {"model_type": "embedding"}, "LLM model"),
        ("model_type", {"model_name": "minilm"}, "embedding model"),
        ("worker_ip", {"worker_ip": "10.0.0.2"}, "one daemon per host"),
        ("replica_config", {"replica_config": [{}]}, "gpu_idx"),
        ("peft_model_config", {"peft_model_config": {"lora_list": []}}, "LoRA"),
        ("request_limits", {"request_limits": 4}, "XINFD_REPLICA_MAX_CONCURRENCY"),
        ("n_worker", {"n_worker": 2}, "one daemon per host"),
        ("download_hub", {"download_hub": "modelscope"}, "XINFERENCE_MODEL_SRC"),
        ("virtual_env_find_links", {"virtual_env_find_links": ["/wheels"]}, "pip configuration"),
        ("gpu_idx", {"gpu_idx": [0, 1], "replica": 2}, "splits"),
        ("envs", {"envs": {"CUDA_VISIBLE_DEVICES": "0"}}, "set by xinfd"),
        ("replica", {"replica": 0}, "replica"),
        ("n_gpu", {"n_gpu": "all"}, "n_gpu"),
        ("model_size_in_billions", {"model_size_in_billions": "big"}, "number"),
        ("model_engine", {"model_engine": 3}, "string"),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_field(field: str, fields: dict[str, Any], words: str) -> None:
    assert words in refused(field, **fields)


def test_unknown_family_is_404() -> None:
    with pytest.raises(UnknownModelError) as info:
        mapped(model_name="ghost")
    assert info.value.param == "model_name"


def test_variant_default_and_checks() -> None:
    assert default_variant(QWEN) == Variant(model_format="pytorch", model_size_in_billions=7.0, quantization="none")
    assert default_variant(MINILM) == Variant(model_format="pytorch", quantization="none")
    assert default_variant(ECHO) == Variant()
    check_variant(QWEN, Variant(model_format="pytorch", model_size_in_billions=7), model_path=False)
    cases = [
        (Variant(model_format="awq"), "model_format", "pytorch, gguf"),
        (Variant(model_size_in_billions=3), "model_size_in_billions", "0.5, 7"),
        (Variant(model_format="gguf", quantization="Q2_K"), "quantization", "Q4_K_M, Q8_0"),
        (Variant(model_size_in_billions=0.5), "model_size_in_billions", "model_path"),
        (Variant(model_format="gguf"), "model_format", "Qwen/Qwen2.5-7B-Instruct"),
    ]
    for wanted, field, words in cases:
        with pytest.raises(InvalidRequestError) as info:
            check_variant(QWEN, wanted, model_path=False)
        assert info.value.param == field and words in str(info.value), (wanted, info.value)
    # With model_path the caller picked the weights: listed values are accepted and described as given.
    gguf = Variant(model_format="gguf", quantization="Q8_0")
    check_variant(QWEN, gguf, model_path=True)
    assert launched_variant(QWEN, gguf, model_path=True) == gguf
    assert launched_variant(QWEN, Variant(), model_path=False) == default_variant(QWEN)
    with pytest.raises(InvalidRequestError) as info:
        check_variant(ECHO, Variant(quantization="none"), model_path=False)
    assert info.value.param == "quantization"


def test_launch_request_round_trips_the_variant() -> None:
    request = mapped(model_name="qwen2.5-instruct", model_format="pytorch", model_size_in_billions=7)
    assert LaunchRequest.from_json(request.to_json()) == request
    assert request.to_json()["model_size_in_billions"] == 7


def test_model_types_fit_llm_embedding_and_rerank() -> None:
    assert model_type(("chat", "generate")) == "LLM" and model_ability(("chat", "generate")) == ["chat", "generate"]
    assert model_type(("embed",)) == "embedding" and model_ability(("embed",)) == ["embed"]
    assert model_type(("rerank",)) == "rerank" and model_ability(("rerank",)) == ["rerank"]
    # Image input to a chat model (GOT-OCR2): an LLM with Xinference's "vision" ability, as its VL models.
    assert model_type(("chat", "vision")) == "LLM" and model_ability(("chat", "vision")) == ["chat", "vision"]
    rows = registration_rows(FAMILIES, {"echo": "user"}, "LLM", detailed=False)
    assert rows == [{"model_name": "echo", "is_builtin": False}, {"model_name": "qwen2.5-instruct", "is_builtin": True}]
    assert [r["model_name"] for r in registration_rows(FAMILIES, {}, "embedding", detailed=True)] == ["minilm"]


def test_xinference_custom_model_translation() -> None:
    engines = {"transformers", "vllm", "llama.cpp", "sentence_transformers"}
    out = spec_json("LLM", {
        "model_name": "mine", "model_ability": ["chat"], "context_length": 2048, "model_lang": ["en"],
        "model_specs": [{"model_format": "gguf", "model_size_in_billions": "1_5", "quantization": "Q4_K_M",
                         "model_uri": "file:///models/mine.gguf"}],
    }, engines)
    assert out["engines"] == ["llama.cpp"] and out["extra"]["model_path"] == "/models/mine.gguf"
    assert out["extra"]["formats"] == [{"format": "gguf", "quantizations": ["Q4_K_M"], "sizes_b": [1.5]}]
    emb = spec_json("embedding", '{"model_name": "e", "dimensions": 8, "max_tokens": 64, "model_id": "a/b"}', engines)
    assert emb["abilities"] == ["embed"] and emb["context_length"] == 64 and emb["extra"]["model_id"] == "a/b"
    for data, field in (
        ({"model_name": "x", "model_ability": ["chat", "tools"]}, "model_ability"),
        ({"model_name": "x", "stop_token_ids": [1]}, "stop_token_ids"),
        ({"model_name": "x", "reasoning_start_tag": "<t>"}, "reasoning_start_tag"),
        ({"model_name": "x", "model_specs": [{"model_format": "onnx"}]}, "model_specs.model_format"),
    ):
        with pytest.raises(InvalidRequestError) as info:
            spec_json("LLM", data, engines)
        assert info.value.param == field, info.value
    with pytest.raises(InvalidRequestError) as info:
        spec_json("LLM", {"name": "x", "abilities": ["embed"], "engines": ["e"]}, engines)
    assert info.value.param == "model_type"


def test_http_launches_follow_the_daemons_launch_policy() -> None:
    """A direct reference in ``virtual_env_packages`` is refused by default and accepted when the operator allows
    it: the HTTP launch obeys the same ``allow_direct_references`` as the Unix socket (it used to be always
    strict)."""
    from xinfd.supervisor import LaunchPolicy

    reference = "mypkg @ https://example.invalid/mypkg-1.0-py3-none-any.whl"
    assert "allow_direct_references" in refused("virtual_env_packages", virtual_env_packages=[reference])
    allowed = launch_request({**CLIENT_DEFAULTS, "virtual_env_packages": [reference]}, FAMILIES,
                             model_src="huggingface", policy=LaunchPolicy(allow_direct_references=True))
    assert allowed.virtual_env_packages == (reference,)
