"""Optional request fields: each refused by name for an engine that does not honour it, passed untouched to
engines with their own server, and what each builtin engine declares."""

from __future__ import annotations

import pytest

from xinfd.errors import InvalidRequestError
from xinfd.plugins import make_plugin_manager
from xinfd.request_features import FEATURES, check_request_features

USED = {
    "logprobs": True, "top_logprobs": 2, "response_format": {"type": "json_object"}, "tools": [{"type": "function"}],
    "tool_choice": "auto", "parallel_tool_calls": True, "functions": [{"name": "f"}], "function_call": "auto",
    "n": 2, "best_of": 3, "logit_bias": {"5": 1}, "presence_penalty": 0.1, "frequency_penalty": -0.1, "echo": True,
    "suffix": "x", "audio": {"voice": "a"}, "modalities": ["text", "audio"], "prediction": {"type": "content"},
    "reasoning_effort": "low", "web_search_options": {},
}


def test_every_listed_field_is_refused_by_name() -> None:
    listed = {name for fields in FEATURES.values() for name in fields}
    assert listed == set(USED)
    for name, value in USED.items():
        with pytest.raises(InvalidRequestError) as caught:
            check_request_features({"model": "m", name: value}, engine="mlx", supported=frozenset())
        assert caught.value.param == name and "'mlx'" in caught.value.message


def test_supported_features_and_own_servers_pass() -> None:
    check_request_features({"logprobs": True, "top_logprobs": 5}, engine="e", supported=frozenset({"logprobs"}))
    check_request_features(USED, engine="vllm", supported=None)
    with pytest.raises(InvalidRequestError, match=r"'tools' is not supported by engine 'e'.*honours: logprobs"):
        check_request_features({"logprobs": True, "tools": [{}]}, engine="e", supported=frozenset({"logprobs"}))


def test_builtin_engines_declare_what_they_honour() -> None:
    plugins = make_plugin_manager(env={})
    declared = {name: plugins.request_features(name) for name in plugins.engines}
    assert declared["vllm"] is None and declared["sglang"] is None  # their servers see every field
    assert declared["transformers"] == declared["llama.cpp"] == declared["echo"] == frozenset({"logprobs"})
    assert declared["mlx"] == declared["sentence_transformers"] == frozenset()
    assert declared["sentence_transformers_rerank"] == frozenset()
