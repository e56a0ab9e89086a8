"""``validate_chat_template_kwargs``: the one check of chat-template arguments, for the daemon and the worker."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xinfd.errors import InvalidRequestError
from xinfd.template_kwargs import RESERVED_KEYS, validate_chat_template_kwargs


def test_absent_or_null_is_empty_and_valid_kwargs_are_copied() -> None:
    assert validate_chat_template_kwargs({}) == {}
    assert validate_chat_template_kwargs({"chat_template_kwargs": None}) == {}
    raw = {"enable_thinking": True, "reasoning_effort": "low"}
    got = validate_chat_template_kwargs({"chat_template_kwargs": raw})
    assert got == raw and got is not raw


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None, [], {}])
def test_enable_thinking_must_be_a_json_boolean(value: object) -> None:
    with pytest.raises(InvalidRequestError, match="must be a boolean") as refused:
        validate_chat_template_kwargs({"chat_template_kwargs": {"enable_thinking": value}})
    assert refused.value.param == "chat_template_kwargs.enable_thinking"
    assert refused.value.status == 400


@pytest.mark.parametrize("key", sorted(RESERVED_KEYS))
def test_keys_the_engine_passes_itself_are_refused(key: str) -> None:
    with pytest.raises(InvalidRequestError, match=f"may not set {key}") as refused:
        validate_chat_template_kwargs({"chat_template_kwargs": {key: 1}})
    assert refused.value.param == f"chat_template_kwargs.{key}"


def test_the_engine_template_arguments_are_reserved() -> None:
    assert {"messages", "add_generation_prompt", "tools", "bos_token", "eos_token", "chat_template"} <= RESERVED_KEYS


def test_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="must be an object") as refused:
        validate_chat_template_kwargs({"chat_template_kwargs": "enable_thinking=false"})
    assert refused.value.param == "chat_template_kwargs"


def test_importing_it_pulls_in_no_server_code() -> None:
    code = (
        "import sys, xinfd.template_kwargs\n"
        "loaded = {'aiohttp', 'xinfd.worker', 'xinfd.worker.host'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
