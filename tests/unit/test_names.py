"""One name validator (``xinfd.names``): full match, ASCII only, no ``..``, through every entry point that
takes a name (launch requests, the control API, the registry, venv directories, ``launch`` items)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web

from tests.unit.api.test_front_end import make_state
from xinfd.api.control import make_control_app
from xinfd.errors import ConfigError, InvalidRequestError
from xinfd.names import (
    DIRECTORY_NAME,
    ENV_NAME,
    MODEL_NAME,
    MODEL_UID,
    InvalidNameError,
    NameKind,
    check_name,
    is_valid_name,
)
from xinfd.registry import ModelRegistry
from xinfd.supervisor.launch_request import LaunchRequest
from xinfd.venvs.spec import VenvSpecError
from xinfd.venvs.spec import check_name as check_venv_name

ClientFactory = Callable[[web.Application], Any]

# Refused for every kind: trailing newline / carriage return (what ``re.match`` + ``$`` let through), inner
# space, empty, look-alikes (Cyrillic e U+0435, fullwidth e U+FF45), a parent reference, a separator, a NUL.
BAD_FOR_ALL = ["echo\n", "echo\r", "ech o", "", "\u0435cho", "\uff45cho", "..", "a/b", "a\0b", "echo\n\n"]
BAD_SIMPLE = [*BAD_FOR_ALL, "a" * 65, "-echo", ".hidden", "a..b", "a:b", 5, None, ["echo"]]
GOOD_SIMPLE = ["echo", "qwen2.5-instruct", "GOT-OCR2", "a" * 64, "m_1.x-2"]


@pytest.mark.parametrize("kind", [MODEL_NAME, MODEL_UID, DIRECTORY_NAME])
@pytest.mark.parametrize("value", BAD_SIMPLE)
def test_simple_names_are_refused(kind: NameKind, value: object) -> None:
    if kind is DIRECTORY_NAME and value == "a" * 65:
        return  # directories take up to 128 characters (checked below)
    assert not is_valid_name(value, kind)
    with pytest.raises(InvalidNameError) as info:
        check_name(value, kind, param="field")
    assert info.value.param == "field" and info.value.code == "invalid_request" and info.value.status == 400
    assert kind.label in info.value.message and repr(value) in info.value.message


@pytest.mark.parametrize("kind", [MODEL_NAME, MODEL_UID, DIRECTORY_NAME])
@pytest.mark.parametrize("value", GOOD_SIMPLE)
def test_simple_names_are_accepted(kind: NameKind, value: str) -> None:
    assert check_name(value, kind, param="field") == value


def test_directory_names_take_128_characters() -> None:
    assert is_valid_name("a" * 128, DIRECTORY_NAME) and not is_valid_name("a" * 129, DIRECTORY_NAME)


@pytest.mark.parametrize("value", [*BAD_FOR_ALL, "1ABC", "A-B", "A.B", "A=B"])
def test_env_names_are_refused(value: str) -> None:
    assert not is_valid_name(value, ENV_NAME)


@pytest.mark.parametrize("value", ["PATH", "_X", "HF_HOME", "a" * 65, "lower_case_9"])
def test_env_names_are_accepted(value: str) -> None:
    assert is_valid_name(value, ENV_NAME)


def test_context_prefixes_the_message() -> None:
    with pytest.raises(InvalidNameError, match=r"^spec\.json: invalid model name 'a\\n' \(name\): expected"):
        check_name("a\n", MODEL_NAME, param="name", context="spec.json")


# -- through the entry points -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", BAD_SIMPLE)
def test_launch_request_refuses_bad_model_names_and_uids(value: object) -> None:
    with pytest.raises(InvalidRequestError) as info:
        LaunchRequest.from_json({"model_name": value})
    assert info.value.param == "model_name"
    if value is None:
        return  # no model_uid: the uid is the model name
    with pytest.raises(InvalidRequestError) as info:
        LaunchRequest.from_json({"model_name": "echo", "model_uid": value})
    assert info.value.param == "model_uid"


@pytest.mark.parametrize("value", [v.upper() for v in BAD_FOR_ALL])
def test_launch_request_refuses_bad_env_names(value: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        LaunchRequest.from_json({"model_name": "echo", "env": {value: "1"}})
    assert info.value.param == "env"


def test_launch_request_accepts_good_names() -> None:
    request = LaunchRequest.from_json({"model_name": "qwen2.5-instruct", "model_uid": "a" * 64,
                                       "env": {"HF_HOME": "/x", "a" * 65: "y"}})
    assert request.model_uid == "a" * 64 and request.model_name == "qwen2.5-instruct"


@pytest.mark.parametrize("value", BAD_SIMPLE)
def test_registry_refuses_bad_names_and_writes_nothing(tmp_path: Path, value: object) -> None:
    registry = ModelRegistry(tmp_path / "registrations", builtin_dir=tmp_path / "none")
    with pytest.raises(InvalidRequestError) as info:
        registry.register({"name": value, "abilities": ["chat"], "engines": ["echo"]}, {})
    assert info.value.param == "name"
    assert not (tmp_path / "registrations").exists()


@pytest.mark.parametrize("value", [*BAD_FOR_ALL, "a" * 129, "a..b"])
def test_venv_directories_refuse_bad_names(value: str) -> None:
    with pytest.raises(VenvSpecError):
        check_venv_name(value, "engine name")


@pytest.mark.parametrize("value", ["echo\n", "ech o", "\u0435cho", "a" * 65, ".."])
def test_launch_items_refuse_bad_names(value: str) -> None:
    from xinfd.config import parse_launch_item

    with pytest.raises(ConfigError, match=r"^launch: "):
        parse_launch_item(f"{value}:1")


async def test_control_api_refuses_bad_names(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_control_app(make_state(tmp_path)))
    for value in ["echo\n", "echo\r", "ech o", "\u0435cho", "a" * 65, "a..b"]:
        resp = await client.post("/v1/models", json={"model_name": "m", "model_uid": value})
        assert resp.status == 400, value
        error = (await resp.json())["error"]
        assert (error["code"], error["param"]) == ("invalid_request", "model_uid")
        resp = await client.post("/v1/registrations", json={"name": value, "abilities": ["chat"],
                                                            "engines": ["cpu"]})
        assert resp.status == 400, value
        assert (await resp.json())["error"]["param"] == "name"
        resp = await client.get(f"/v1/models/{quote(value, safe='')}/logs")
        assert resp.status == 400, value
        error = (await resp.json())["error"]
        assert error["param"] == "uid" and "invalid model uid" in error["message"]
    assert not (tmp_path / "models" / "registrations").exists()
