"""Model downloads against a loopback Hugging Face hub started by the test (issue 5, model sources).

The fake hub speaks what ``huggingface_hub.snapshot_download`` asks for (read from the installed library):
``GET /api/models/{repo}/revision/{rev}`` (the commit sha), ``GET /api/models/{repo}/tree/{sha}`` (the file
list), then ``HEAD``/``GET /{repo}/resolve/{sha}/{file}`` with ``ETag`` and ``X-Repo-Commit``.

Offline mode: ``tests/conftest.py`` sets ``HF_HUB_OFFLINE=1`` for the whole run, and huggingface_hub copies it
into ``huggingface_hub.constants.HF_HUB_OFFLINE`` when first imported. A test that downloads therefore unsets
both — the variable (xinfd reads it per launch) and the library's copy (its HTTP session refuses every request
otherwise) — through ``monkeypatch``, so both come back after the test and no other test can reach a hub.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.unit.test_models_supervision import RecordingSpawner
from tests.unit.test_replicas import FakeReplica
from xinfd import models as models_module
from xinfd.downloads import MARKER, Downloader, DownloadSettings, repo_on_source, repo_to_download
from xinfd.errors import DownloadError, LaunchError
from xinfd.hookspecs import hookimpl
from xinfd.models import LaunchRequest, ModelManager
from xinfd.plugins import make_plugin_manager
from xinfd.types import Availability, EngineInfo, LaunchSpec, ModelSpec, Platform, ReadinessProbe

SHA = "0123456789abcdef0123456789abcdef01234567"
REPO = "tiny-org/tiny-model"
FILES = {"config.json": b'{"model_type": "llama"}\n', "weights/model.safetensors": b"\x00" * 4096}

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


@dataclass
class FakeHub:
    """State of the loopback hub: the repos it knows, how many 503s to send first, and what it was asked."""

    repos: dict[str, dict[str, bytes]] = field(default_factory=lambda: {REPO: dict(FILES)})
    fail_first: int = 0
    slow_body: float = 0.0  # seconds to pause half-way through each file body
    cut_first_body: bool = False  # drop the connection half-way through the first file body sent
    ranges: list[str] = field(default_factory=list)  # Range headers received
    requests: list[str] = field(default_factory=list)

    def app(self, prefix: str = "") -> web.Application:
        """The hub's routes, under ``prefix`` (CSGHub serves the same API under ``/csg``)."""
        app = web.Application()
        app.router.add_get(prefix + "/api/models/{org}/{name}/revision/{rev}", self.revision)
        app.router.add_get(prefix + "/api/models/{org}/{name}/tree/{rev}", self.tree)
        app.router.add_get(prefix + "/{org}/{name}/resolve/{rev}/{path:.+}", self.resolve)
        return app

    def _files(self, request: web.Request) -> dict[str, bytes]:
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        self.requests.append(f"{request.method} {request.path}")
        if repo not in self.repos:
            # What the real hub answers: huggingface_hub maps this header to RepositoryNotFoundError.
            raise web.HTTPNotFound(headers={"X-Error-Code": "RepoNotFound"},
                                   text=json.dumps({"error": "Repository not found"}),
                                   content_type="application/json")
        return self.repos[repo]

    def modelscope_app(self) -> web.Application:
        """ModelScope's API as its client asks for it: the file list, then each file by ``FilePath``."""
        app = web.Application()
        app.router.add_get("/api/v1/models/{org}/{name}/repo/files", self.ms_files)
        app.router.add_get("/api/v1/models/{org}/{name}/repo", self.ms_file)
        return app

    async def ms_files(self, request: web.Request) -> web.Response:
        if self.fail_first > 0:
            self.fail_first -= 1
            self.requests.append(f"{request.method} {request.path} -> 503")
            return web.json_response({"Code": 503, "Message": "overloaded"}, status=503)
        files = self._files(request)
        return web.json_response({"Code": 200, "Success": True, "Data": {"Files": [
            {"Path": name, "Name": name.rsplit("/", 1)[-1], "Type": "blob", "Size": len(data),
             "Sha256": hashlib.sha256(data).hexdigest(), "Revision": SHA} for name, data in files.items()]}})

    async def ms_file(self, request: web.Request) -> web.Response:
        data = self._files(request).get(request.query.get("FilePath", ""))
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="application/octet-stream")

    async def revision(self, request: web.Request) -> web.Response:
        if self.fail_first > 0:
            self.fail_first -= 1
            self.requests.append(f"{request.method} {request.path} -> 503")
            return web.json_response({"error": "hub overloaded"}, status=503)
        files = self._files(request)
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        return web.json_response({"id": repo, "modelId": repo, "sha": SHA, "private": False,
                                  "siblings": [{"rfilename": name} for name in files]})

    async def tree(self, request: web.Request) -> web.Response:
        files = self._files(request)
        return web.json_response([{"type": "file", "path": name, "size": len(data), "oid": _oid(data)}
                                  for name, data in files.items()])

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        files = self._files(request)
        data = files.get(request.match_info["path"])
        if data is None:
            raise web.HTTPNotFound(headers={"X-Error-Code": "EntryNotFound"})
        headers = {"ETag": f'"{_oid(data)}"', "X-Repo-Commit": SHA, "Accept-Ranges": "bytes"}
        if request.method == "GET" and "Range" in request.headers:
            self.ranges.append(request.headers["Range"])
            start = int(request.headers["Range"].removeprefix("bytes=").split("-")[0])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return web.Response(body=data[start:], status=206, headers=headers,
                                content_type="application/octet-stream")
        if request.method == "GET" and self.cut_first_body:
            self.cut_first_body = False
            response = web.StreamResponse(headers={**headers, "Content-Length": str(len(data))})
            await response.prepare(request)
            await response.write(data[: len(data) // 2])
            assert request.transport is not None
            request.transport.close()  # the client sees a body shorter than its Content-Length
            return response
        if request.method == "HEAD" or not self.slow_body:
            return web.Response(body=data, headers=headers, content_type="application/octet-stream")
        response = web.StreamResponse(headers={**headers, "Content-Length": str(len(data))})
        await response.prepare(request)
        half = len(data) // 2
        await response.write(data[:half])
        await asyncio.sleep(self.slow_body)
        await response.write(data[half:])
        await response.write_eof()
        return response


def _oid(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()  # a git-like blob id, not security


class Events:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    async def __call__(self, event: dict[str, Any]) -> None:
        self.items.append(event)

    def names(self) -> list[str]:
        return [e["event"] for e in self.items]


@pytest.fixture
async def hub(monkeypatch: pytest.MonkeyPatch, aiohttp_server: ServerFactory) -> FakeHub:
    import huggingface_hub.constants

    fake = FakeHub()
    server = await aiohttp_server(fake.app())
    assert server.host in ("127.0.0.1", "localhost")  # loopback only
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return fake


def downloader(tmp_path: Path, attempts: int = 3) -> tuple[Downloader, list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # the backoff is recorded, not waited: tests stay fast
        slept.append(seconds)

    settings = DownloadSettings(source="huggingface", cache_root=tmp_path / "models", max_attempts=attempts,
                                backoff=0.5)
    return Downloader(settings=settings, sleep=sleep), slept


SPEC = ModelSpec(name="tiny", abilities=("chat",), engines=("transformers",), extra={"model_id": REPO})


async def test_download_lands_in_the_cache_and_a_later_launch_reuses_it(hub: FakeHub, tmp_path: Path) -> None:
    dl, slept = downloader(tmp_path)
    events = Events()
    path = await dl.weights_for("transformers", SPEC, {}, events)
    assert path == str(tmp_path / "models" / "huggingface" / REPO)
    for name, data in FILES.items():
        assert (Path(path) / name).read_bytes() == data
    assert (Path(path) / MARKER).is_file()
    assert events.names() == ["downloading", "downloaded"]
    assert slept == []
    asked = len(hub.requests)
    assert asked >= 3

    again = Events()
    assert await downloader(tmp_path)[0].weights_for("transformers", SPEC, {}, again) == path
    assert len(hub.requests) == asked  # the hub was not asked anything
    assert again.names() == ["download_cached"]


async def test_progress_is_published_while_bytes_arrive(hub: FakeHub, tmp_path: Path) -> None:
    hub.repos[REPO]["weights/model.safetensors"] = b"\x01" * 2_000_000
    hub.slow_body = 0.5
    dl, _ = downloader(tmp_path)
    dl.progress_interval = 0.05
    events = Events()
    assert await dl.weights_for("transformers", SPEC, {}, events) is not None
    progress = [e for e in events.items if e["event"] == "download_progress"]
    assert progress and 0 < progress[0]["bytes"] < 2_000_000  # a partial file was seen on disk
    assert events.names()[0] == "downloading" and events.names()[-1] == "downloaded"


async def test_an_interrupted_file_resumes_where_it_stopped(monkeypatch: pytest.MonkeyPatch, hub: FakeHub,
                                                           tmp_path: Path) -> None:
    import huggingface_hub.constants

    # The client writes in 10 MB chunks; smaller ones let a 1 MB file be cut after some were written.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    data = bytes(range(256)) * 4000
    hub.repos[REPO] = {"model.safetensors": data}
    hub.cut_first_body = True
    path = await downloader(tmp_path)[0].weights_for("transformers", SPEC, {}, Events())
    assert path is not None
    assert (Path(path) / "model.safetensors").read_bytes() == data
    assert len(hub.ranges) == 1  # asked again only for what was missing
    start = int(hub.ranges[0].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= len(data) // 2


async def test_503_is_retried_with_backoff_then_succeeds(hub: FakeHub, tmp_path: Path) -> None:
    hub.fail_first = 2
    dl, slept = downloader(tmp_path, attempts=3)
    events = Events()
    path = await dl.weights_for("transformers", SPEC, {}, events)
    assert path is not None and (Path(path) / "config.json").is_file()
    assert events.names() == ["downloading", "download_retry", "downloading", "download_retry",
                              "downloading", "downloaded"]
    assert slept == [0.5, 1.0]
    assert "503" in events.items[1]["message"]


async def test_gives_up_after_max_attempts_naming_model_source_error(hub: FakeHub, tmp_path: Path) -> None:
    hub.fail_first = 10
    dl, slept = downloader(tmp_path, attempts=2)
    events = Events()
    with pytest.raises(DownloadError) as info:
        await dl.weights_for("transformers", SPEC, {}, events)
    message = str(info.value)
    assert "tiny" in message and REPO in message and "huggingface" in message
    assert "gave up after 2 attempt(s)" in message and "503" in message
    assert info.value.code == "download_failed"
    assert slept == [0.5]
    assert sum(r.endswith("-> 503") for r in hub.requests) == 2
    assert not (tmp_path / "models" / "huggingface" / REPO / MARKER).exists()


async def test_unknown_repo_fails_at_once_without_retrying(hub: FakeHub, tmp_path: Path) -> None:
    spec = ModelSpec(name="ghost", abilities=("chat",), engines=("transformers",),
                     extra={"model_id": "nobody/no-such-model"})
    dl, slept = downloader(tmp_path, attempts=3)
    with pytest.raises(DownloadError) as info:
        await dl.weights_for("transformers", spec, {}, Events())
    message = str(info.value)
    assert "ghost" in message and "nobody/no-such-model" in message and "huggingface" in message
    assert "RepositoryNotFoundError" in message
    assert slept == []
    assert len(hub.requests) == 1


async def test_connection_refused_is_retried(monkeypatch: pytest.MonkeyPatch, hub: FakeHub,
                                             tmp_path: Path, unused_tcp_port: int) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{unused_tcp_port}")  # nothing listens there
    dl, slept = downloader(tmp_path, attempts=2)
    with pytest.raises(DownloadError) as info:
        await dl.weights_for("transformers", SPEC, {}, Events())
    assert "gave up after 2 attempt(s)" in str(info.value)
    assert "Connect" in str(info.value)
    assert slept == [0.5]


async def test_offline_leaves_an_uncached_model_to_the_engine(tmp_path: Path) -> None:
    # conftest's HF_HUB_OFFLINE=1 is in force here: no hub is asked, the launch goes on as before.
    events = Events()
    assert await downloader(tmp_path)[0].weights_for("transformers", SPEC, {}, events) is None
    assert events.names() == ["download_skipped"]


@pytest.mark.parametrize(
    ("engine", "options", "extra", "expected"),
    [
        ("transformers", {}, {"model_id": REPO}, REPO),
        ("llama.cpp", {}, {"model_id": REPO}, None),  # needs one .gguf file, not a folder
        ("transformers", {"model_path": "/w"}, {"model_id": REPO}, None),
        ("transformers", {}, {"model_id": REPO, "model_path": "/w"}, None),
        ("transformers", {}, {"model_id": REPO, "package_file": {"package": "p", "file": "f"}}, None),
        ("transformers", {}, {"model_id": "../etc"}, None),
        ("transformers", {}, {}, None),
    ],
)
def test_download_only_when_the_hub_id_is_all_there_is(engine: str, options: dict[str, Any],
                                                       extra: dict[str, Any], expected: str | None) -> None:
    spec = ModelSpec(name="m", abilities=("chat",), engines=(engine,), extra=extra)
    assert repo_to_download(engine, spec, options) == expected


class HubOnlyEngine:
    """An engine named like a folder engine, serving a family that names only a hub repo."""

    def __init__(self) -> None:
        self.options: list[dict[str, Any]] = []

    @hookimpl
    def xinfd_register_engines(self, register):  # type: ignore[no-untyped-def]
        register(EngineInfo(name="transformers", abilities=("chat",)))

    @hookimpl
    def xinfd_register_models(self, register):  # type: ignore[no-untyped-def]
        register(SPEC)

    @hookimpl
    def xinfd_engine_availability(self, engine, model, platform):  # type: ignore[no-untyped-def]
        return Availability(available=True, reason="ok")

    @hookimpl
    def xinfd_engine_launch(self, engine, model, replica):  # type: ignore[no-untyped-def]
        self.options.append(dict(replica.options))
        return LaunchSpec(argv=("worker",), readiness=ReadinessProbe(timeout_s=2, interval_s=0.001))


async def test_launch_downloads_before_replicas_and_passes_model_path(
    monkeypatch: pytest.MonkeyPatch, hub: FakeHub, tmp_path: Path
) -> None:
    monkeypatch.setattr(models_module, "Replica", FakeReplica)
    engine = HubOnlyEngine()
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[engine], env={})
    dl, _ = downloader(tmp_path)
    mgr = ModelManager(plugins=plugins, platform=Platform(system="Linux", machine="x86_64",
                                                          python_version="3.11.7"),
                       home=tmp_path, spawner=RecordingSpawner(), stop_grace=0.1, launch_timeout=5,
                       base_env={"PATH": "/bin"}, downloader=dl)
    model = await mgr.wait_until_launched(mgr.start_launch(LaunchRequest(model_name="tiny")))
    folder = str(tmp_path / "models" / "huggingface" / REPO)
    assert engine.options[0] == {}  # start_launch's early check: the request as the user sent it
    assert engine.options[-1] == {"model_path": folder}  # the replica's spec: the downloaded folder
    names = [e["event"] for e in model.events]
    assert names.index("downloaded") < names.index("replica_starting")
    assert model.request.options == {}  # the desired state keeps what the user asked for
    await mgr.close()


async def test_failed_download_fails_the_launch_with_its_message(hub: FakeHub, tmp_path: Path) -> None:
    hub.repos.clear()
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[HubOnlyEngine()], env={})
    mgr = ModelManager(plugins=plugins, platform=Platform(system="Linux", machine="x86_64",
                                                          python_version="3.11.7"),
                       home=tmp_path, spawner=RecordingSpawner(), stop_grace=0.1, launch_timeout=5,
                       downloader=downloader(tmp_path)[0])
    model = mgr.start_launch(LaunchRequest(model_name="tiny"))
    with pytest.raises(LaunchError, match="cannot download model tiny"):
        await mgr.wait_until_launched(model)
    assert model.events[-1]["code"] == "download_failed"
    assert "tiny" not in mgr.models


def test_the_source_gets_its_own_name_for_the_repo() -> None:
    sources = {"huggingface": "meta-llama/Llama-3.2-{size}B-Instruct",
               "modelscope": "LLM-Research/Llama-3.2-{size}B-Instruct"}
    gguf = {"huggingface": "bartowski/Llama-3.2-{size}B-Instruct-GGUF"}
    spec = ModelSpec(name="llama", abilities=("chat",), engines=("transformers",),
                     extra={"formats": [{"format": "gguf", "sources": gguf},
                                        {"format": "pytorch", "sources": sources}]})
    hf_id = "meta-llama/Llama-3.2-3B-Instruct"
    assert repo_on_source(spec, hf_id, "modelscope") == "LLM-Research/Llama-3.2-3B-Instruct"
    assert repo_on_source(spec, hf_id, "huggingface") == hf_id
    assert repo_on_source(spec, "someone/else", "csghub") == "someone/else"  # not listed: the same id


async def test_csghub_through_its_sdk(aiohttp_server: ServerFactory, tmp_path: Path) -> None:
    """CSGHub through ``pycsghub`` (optional: ``pip install csghub-sdk``), against the same fake hub."""
    pytest.importorskip("pycsghub")
    fake = FakeHub(fail_first=1)
    server = await aiohttp_server(fake.app(prefix="/csg"))
    settings = DownloadSettings(source="csghub", cache_root=tmp_path / "models", backoff=0.0,
                                csg_endpoint=f"http://127.0.0.1:{server.port}/", csg_token="t0ken")
    events = Events()
    path = await Downloader(settings=settings).weights_for("transformers", SPEC, {}, events)
    assert path is not None and (Path(path) / "config.json").read_bytes() == FILES["config.json"]
    assert events.names() == ["downloading", "download_retry", "downloading", "downloaded"]


async def test_modelscope_through_its_client(monkeypatch: pytest.MonkeyPatch, aiohttp_server: ServerFactory,
                                             tmp_path: Path) -> None:
    """ModelScope through ``modelscope`` (optional: ``pip install modelscope``), against a loopback fake."""
    pytest.importorskip("modelscope")
    fake = FakeHub(fail_first=1)
    server = await aiohttp_server(fake.modelscope_app())
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", f"http://127.0.0.1:{server.port}")  # the client's own setting
    settings = DownloadSettings(source="modelscope", cache_root=tmp_path / "models", backoff=0.0)
    events = Events()
    path = await Downloader(settings=settings).weights_for("transformers", SPEC, {}, events)
    assert path == str(tmp_path / "models" / "modelscope" / REPO)
    for name, data in FILES.items():
        assert (Path(path) / name).read_bytes() == data
    # The client retries a listing itself (1 s, then more, 4 times): the 503 is absorbed below xinfd's retry.
    assert events.names() == ["downloading", "downloaded"]
    assert any(r.endswith("-> 503") for r in fake.requests)
