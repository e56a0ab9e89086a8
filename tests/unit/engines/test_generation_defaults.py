"""The transformers engine's sampling defaults from the weights' generation_config.json: temperature and top_p
when the config samples and sets them; nothing from a greedy config or transformers' own 1.0 defaults."""

from __future__ import annotations

from types import SimpleNamespace

from xinfd_engines.transformers_model import generation_defaults


def test_a_sampling_config_gives_its_temperature_and_top_p() -> None:
    config = SimpleNamespace(do_sample=True, temperature=0.6, top_p=0.95, top_k=20, repetition_penalty=1.1)
    assert generation_defaults(config) == {"temperature": 0.6, "top_p": 0.95}


def test_greedy_configs_and_library_defaults_give_nothing() -> None:
    assert generation_defaults(None) == {}
    assert generation_defaults(SimpleNamespace(do_sample=False, temperature=0.6, top_p=0.9)) == {}
    assert generation_defaults(SimpleNamespace(do_sample=True, temperature=1.0, top_p=1.0)) == {}
    assert generation_defaults(SimpleNamespace(do_sample=True, temperature=None, top_p=0.8)) == {"top_p": 0.8}
