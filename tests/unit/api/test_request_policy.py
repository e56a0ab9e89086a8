"""The daemon's request policy: the max-tokens cap and default chat-template arguments, for every engine."""

from __future__ import annotations

import json
from typing import Any

import pytest

from xinfd.api.request_policy import default_budget, forwarded_body, sets_no_limit


def forwarded(body: dict[str, Any], endpoint: str = "chat/completions", **policy: Any) -> dict[str, Any] | None:
    """The forwarded body, or None when the client's bytes go through untouched."""
    raw = json.dumps(body).encode()
    policy.setdefault("max_tokens", None)
    policy.setdefault("chat_template_kwargs", {})
    out = forwarded_body(raw, body, endpoint, **policy)
    return None if out is raw else dict(json.loads(out))


@pytest.mark.parametrize("endpoint", ["chat/completions", "completions"])
def test_a_request_without_a_limit_gets_the_cap(endpoint: str) -> None:
    assert forwarded({"model": "m"}, endpoint, max_tokens=2) == {"model": "m", "max_tokens": 2}


@pytest.mark.parametrize("endpoint", ["chat/completions", "completions"])
def test_a_larger_limit_is_lowered_and_a_smaller_one_kept(endpoint: str) -> None:
    assert forwarded({"model": "m", "max_tokens": 6}, endpoint, max_tokens=2) == {"model": "m", "max_tokens": 2}
    assert forwarded({"model": "m", "max_tokens": 1}, endpoint, max_tokens=2) is None


def test_max_completion_tokens_is_capped_too() -> None:
    body = {"model": "m", "max_completion_tokens": 50, "max_tokens": 1}
    assert forwarded(body, max_tokens=4) == {"model": "m", "max_completion_tokens": 4, "max_tokens": 1}


def test_a_limit_of_the_wrong_type_is_left_for_the_replica_to_refuse() -> None:
    assert forwarded({"model": "m", "max_tokens": "9"}, max_tokens=2) is None
    assert forwarded({"model": "m", "max_tokens": True}, max_tokens=2) is None


def test_no_cap_and_no_defaults_forward_the_clients_bytes() -> None:
    assert forwarded({"model": "m", "max_tokens": 10**6}) is None


def test_embeddings_are_never_changed() -> None:
    assert forwarded({"model": "m", "input": "x"}, "embeddings", max_tokens=2) is None


def test_template_defaults_are_added_and_the_requests_own_value_wins() -> None:
    defaults = {"enable_thinking": False}
    assert forwarded({"model": "m"}, chat_template_kwargs=defaults) == {
        "model": "m",
        "chat_template_kwargs": {"enable_thinking": False},
    }
    own = {"model": "m", "chat_template_kwargs": {"enable_thinking": True, "x": 1}}
    assert forwarded(own, chat_template_kwargs=defaults) is None


def test_template_defaults_only_apply_to_chat() -> None:
    assert forwarded({"model": "m", "prompt": "p"}, "completions", chat_template_kwargs={"a": 1}) is None


def test_template_kwargs_that_are_not_an_object_are_left_for_the_replica_to_refuse() -> None:
    assert forwarded({"model": "m", "chat_template_kwargs": "x"}, chat_template_kwargs={"a": 1}) is None


def test_unicode_survives_a_rewrite() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "héllo ☃"}]}
    assert forwarded(body, max_tokens=3) == {**body, "max_tokens": 3}


# -- the default completion budget and the family's sampling ---------------------------------------------------
@pytest.mark.parametrize("endpoint", ["chat/completions", "completions"])
def test_a_request_without_a_limit_gets_the_default_budget(endpoint: str) -> None:
    assert forwarded({"model": "m"}, endpoint, default_max_tokens=7) == {"model": "m", "max_tokens": 7}
    assert forwarded({"model": "m", "max_tokens": None}, endpoint, default_max_tokens=7) == {
        "model": "m", "max_tokens": 7,
    }


def test_the_cap_wins_over_the_default_and_a_clients_own_limit_is_kept() -> None:
    assert forwarded({"model": "m"}, default_max_tokens=7, max_tokens=3) == {"model": "m", "max_tokens": 3}
    assert forwarded({"model": "m", "max_tokens": 50}, default_max_tokens=7) is None
    assert forwarded({"model": "m", "max_completion_tokens": 50}, default_max_tokens=7) is None
    assert forwarded({"model": "m", "max_tokens": 50}, default_max_tokens=7, max_tokens=3) == {
        "model": "m", "max_tokens": 3,
    }


def test_default_budget_prefers_the_family_and_stays_within_the_context_and_cap() -> None:
    assert default_budget(family=256, daemon=1024, context_length=8192, cap=None) == 256
    assert default_budget(family=None, daemon=1024, context_length=8192, cap=None) == 1024
    assert default_budget(family=None, daemon=1024, context_length=512, cap=None) == 512
    assert default_budget(family=256, daemon=1024, context_length=8192, cap=64) == 64


def test_sets_no_limit_names_only_generating_requests_without_one() -> None:
    assert sets_no_limit({"model": "m"}, "chat/completions")
    assert sets_no_limit({"model": "m", "max_completion_tokens": None}, "chat/completions")
    assert not sets_no_limit({"model": "m", "max_completion_tokens": 3}, "chat/completions")
    assert not sets_no_limit({"model": "m", "max_tokens": 3}, "completions")
    assert not sets_no_limit({"model": "m"}, "embeddings")


def test_family_sampling_fills_only_the_fields_a_request_leaves_unset() -> None:
    family = {"temperature": 0.2, "top_p": 0.9, "top_k": 40}
    assert forwarded({"model": "m", "max_tokens": 5}, sampling=family) == {
        "model": "m", "max_tokens": 5, "temperature": 0.2, "top_p": 0.9, "top_k": 40,
    }
    own = {"model": "m", "max_tokens": 5, "temperature": 0, "top_p": None, "top_k": 3}
    assert forwarded(own, sampling=family) == {**own, "top_p": 0.9}
    everything = {"model": "m", "max_tokens": 5, "temperature": 1, "top_p": 1, "top_k": 0}
    assert forwarded(everything, sampling=family) is None
    assert forwarded({"model": "m", "input": "x"}, "embeddings", sampling=family) is None
