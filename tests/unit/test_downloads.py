"""Model downloads against a loopback hub started by the test (the model-sources settings).

The fake hub speaks what each client library asks for (read from the installed libraries):

- ``huggingface_hub.snapshot_download``: ``GET /api/models/{repo}/revision/{rev}`` (the commit sha),
  ``GET /api/models/{repo}/tree/{sha}`` (the file list), then ``HEAD``/``GET /{repo}/resolve/{sha}/{file}`` with
  ``ETag`` and ``X-Repo-Commit``.
- ``pycsghub`` (package ``csghub-sdk``): the same API under ``/csg`` on ``XINFERENCE_CSG_ENDPOINT``:
  ``GET /csg/api/models/{repo}/revision/main`` (sha and ``siblings``), then ``GET /csg/{repo}/resolve/main/{file}``,
  each with ``Authorization: Bearer <XINFERENCE_CSG_TOKEN>``.
- ``modelscope`` (through ``modelscope_hub``): ``GET /api/v1/models/{repo}/repo/files?Revision=master&Recursive=True``
  (``Data.Files`` with ``Path``, ``Type``, ``Size``, ``Sha256``, which the client checks), then
  ``GET /api/v1/models/{repo}/repo?Revision=master&FilePath={file}`` per file, on ``MODELSCOPE_ENDPOINT``. It also
  probes ``/api/v1/repos/internalAccelerationInfo`` (an Alibaba-cloud region hint); the 404 it gets here is what
  any host outside that cloud answers.

Both optional clients are in the ``test`` extra; without them their tests skip (``pytest.importorskip``).

Offline mode: ``tests/conftest.py`` sets ``HF_HUB_OFFLINE=1`` for the whole run, and huggingface_hub copies it
into ``huggingface_hub.constants.HF_HUB_OFFLINE`` when first imported. A test that downloads therefore unsets
both — the variable (xinfd reads it per launch) and the library's copy (its HTTP session refuses every request
otherwise) — through ``monkeypatch``, so both come back after the test and no other test can reach a hub.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from xinfd_engines import llama_cpp as llama_cpp_engine
from xinfd_engines import transformers as transformers_engine

from tests.unit.stub_engines import StubEngine, StubPlugin
from tests.unit.test_models_supervision import RecordingSpawner
from tests.unit.test_replicas import FakeReplicas
from xinfd.downloads import MARKER, Downloader, DownloadSettings, repo_on_source, repo_to_download
from xinfd.errors import DownloadError, LaunchError
from xinfd.events import LaunchEvent
from xinfd.plugins import make_plugin_manager
from xinfd.supervisor import LaunchRequest, ModelManager
from xinfd.types import LaunchSpec, ModelSpec, Platform, ReadinessProbe, ReplicaContext


@pytest.fixture(autouse=True)
def _collect_third_party_sockets() -> Iterator[None]:
    """The hub clients (pycsghub, modelscope) leave sockets of failed requests for the garbage collector; collect
    them after each test with their ResourceWarning silenced, so they cannot surface (as an error, under
    filterwarnings=error) in whatever test happens to run when the collector does. xinfd's own sockets are
    not exempt: they are closed explicitly and other tests would still see them."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()

# pycsghub and modelscope drop the response of a failed request without closing it; the collector may reclaim
# that socket at any point of the test (CI once caught it inside json encoding, after a retried 503), and under
# filterwarnings=error its ResourceWarning would fail the test for the client's leak. The tests that drive those
# clients ignore ResourceWarning while they run; the autouse fixture above collects what is left afterwards.
LEAKY_HUB_CLIENT = pytest.mark.filterwarnings("ignore::ResourceWarning")

SHA = "0123456789abcdef0123456789abcdef01234567"
FOLDER_ENGINE = StubEngine(name="transformers", loads_weights_folder=True)
BUILTIN = {"transformers": transformers_engine.ENGINE, "llama.cpp": llama_cpp_engine.ENGINE}
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
    fail_file: dict[str, int] = field(default_factory=dict)  # path -> 503s to answer for its body first
    fetched: list[str] = field(default_factory=list)  # paths whose body was sent
    auth: list[str | None] = field(default_factory=list)  # the Authorization header of every repo request
    url: str = ""  # where the test serves it

    def app(self, prefix: str = "") -> web.Application:
        """The hub's routes, under ``prefix`` (CSGHub serves the same API under ``/csg``)."""
        app = web.Application()
        app.router.add_get(prefix + "/api/models/{org}/{name}/revision/{rev}", self.revision)
        app.router.add_get(prefix + "/api/models/{org}/{name}/tree/{rev}", self.tree)
        app.router.add_get(prefix + "/{org}/{name}/resolve/{rev}/{path:.+}", self.resolve)
        return app

    def _files(self, request: web.Request) -> dict[str, bytes]:
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        self.requests.append(f"{request.method} {request.path_qs}")
        self.auth.append(request.headers.get("Authorization"))
        if repo not in self.repos:
            # What the real hub answers: huggingface_hub maps this header to RepositoryNotFoundError.
            raise web.HTTPNotFound(headers={"X-Error-Code": "RepoNotFound"},
                                   text=json.dumps({"error": "Repository not found"}),
                                   content_type="application/json")
        return self.repos[repo]

    def _file_failure(self, request: web.Request, path: str) -> web.Response | None:
        """A 503 for this file's body while ``fail_file`` still owes some."""
        if request.method != "GET" or self.fail_file.get(path, 0) <= 0:
            return None
        self.fail_file[path] -= 1
        self.requests.append(f"{request.method} {request.path_qs} -> 503")
        return web.json_response({"Code": 503, "Message": "overloaded"}, status=503)

    def modelscope_app(self) -> web.Application:
        """ModelScope's API as its client asks for it: the file list, then each file by ``FilePath``."""
        app = web.Application()
        app.router.add_get("/api/v1/models/{org}/{name}/repo/files", self.ms_files)
        app.router.add_get("/api/v1/models/{org}/{name}/repo", self.ms_file)
        return app

    async def ms_files(self, request: web.Request) -> web.Response:
        if self.fail_first > 0:
            self.fail_first -= 1
            self.requests.append(f"{request.method} {request.path_qs} -> 503")
            return web.json_response({"Code": 503, "Message": "overloaded"}, status=503)
        files = self._files(request)
        if request.query.get("Revision") != "master":  # the client's default branch; a 4xx fails the test at once
            raise web.HTTPBadRequest(text=f"unexpected revision {request.query.get('Revision')!r}")
        return web.json_response({"Code": 200, "Success": True, "Message": "success", "Data": {"Files": [
            {"Path": name, "Name": name.rsplit("/", 1)[-1], "Type": "blob", "Size": len(data),
             "Sha256": hashlib.sha256(data).hexdigest(), "Revision": SHA} for name, data in files.items()]}})

    async def ms_file(self, request: web.Request) -> web.StreamResponse:
        path = request.query.get("FilePath", "")
        data = self._files(request).get(path)
        if data is None:
            raise web.HTTPNotFound()
        failure = self._file_failure(request, path)
        if failure is not None:
            return failure
        self.fetched.append(path)
        return await self._body(request, data, {})

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
        failure = self._file_failure(request, request.match_info["path"])
        if failure is not None:
            return failure
        if request.method == "GET":
            self.fetched.append(request.match_info["path"])
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
        if request.method == "HEAD":
            return web.Response(body=data, headers=headers, content_type="application/octet-stream")
        return await self._body(request, data, headers)

    async def _body(self, request: web.Request, data: bytes, headers: dict[str, str]) -> web.StreamResponse:
        """A file body, paused half-way for ``slow_body`` seconds if set."""
        if not self.slow_body:
            return web.Response(body=data, headers=headers, content_type="application/octet-stream")
        response = web.StreamResponse(headers={**headers, "Content-Length": str(len(data)),
                                               "Content-Type": "application/octet-stream"})
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

    async def __call__(self, event: LaunchEvent) -> None:
        self.items.append(event.to_json())

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


def downloader(tmp_path: Path, attempts: int = 3, source: str = "huggingface",
               **settings: Any) -> tuple[Downloader, list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # the backoff is recorded, not waited: tests stay fast
        slept.append(seconds)

    return Downloader(settings=DownloadSettings(source=source, cache_root=tmp_path / "models", max_attempts=attempts,
                                                backoff=0.5, **settings), sleep=sleep), slept


SPEC = ModelSpec(name="tiny", abilities=("chat",), engines=("transformers",), extra={"model_id": REPO})


async def test_download_lands_in_the_cache_and_a_later_launch_reuses_it(hub: FakeHub, tmp_path: Path) -> None:
    dl, slept = downloader(tmp_path)
    events = Events()
    path = await dl.weights_for(FOLDER_ENGINE, SPEC, {}, events)
    assert path == str(tmp_path / "models" / "huggingface" / REPO)
    for name, data in FILES.items():
        assert (Path(path) / name).read_bytes() == data
    assert (Path(path) / MARKER).is_file()
    assert events.names() == ["downloading", "downloaded"]
    assert slept == []
    asked = len(hub.requests)
    assert asked >= 3

    again = Events()
    assert await downloader(tmp_path)[0].weights_for(FOLDER_ENGINE, SPEC, {}, again) == path
    assert len(hub.requests) == asked  # the hub was not asked anything
    assert again.names() == ["download_cached"]


# The daemon's process has no TLS in asyncio and aiohttp (xinfd.without_tls); the hub clients run in threads and
# must still work there. The child imports xinfd.daemon first, as the daemon's entry points do.
_DOWNLOAD_IN_THE_DAEMONS_PROCESS = """
import xinfd.daemon
import asyncio, sys
from pathlib import Path
from xinfd.downloads import Downloader, DownloadSettings
from tests.unit.test_downloads import FOLDER_ENGINE, SPEC
assert xinfd.without_tls.LOADED_WITHOUT_TLS
async def publish(event): pass
downloader = Downloader(settings=DownloadSettings(source="huggingface", cache_root=Path(sys.argv[1]), max_attempts=1))
print(asyncio.run(downloader.weights_for(FOLDER_ENGINE, SPEC, {}, publish)))
"""


async def test_a_download_works_from_the_daemons_process_without_tls(hub: FakeHub, tmp_path: Path) -> None:
    import os
    import sys

    root = Path(__file__).resolve().parents[2]
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DOWNLOAD_IN_THE_DAEMONS_PROCESS, str(tmp_path / "models"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=root,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))})
    out, err = await asyncio.wait_for(child.communicate(), 120)
    assert child.returncode == 0, err.decode()
    path = Path(out.decode().strip().splitlines()[-1])
    assert all((path / name).read_bytes() == data for name, data in FILES.items())


async def test_progress_is_published_while_bytes_arrive(hub: FakeHub, tmp_path: Path) -> None:
    hub.repos[REPO]["weights/model.safetensors"] = b"\x01" * 2_000_000
    hub.slow_body = 0.5
    dl, _ = downloader(tmp_path)
    dl.progress_interval = 0.05
    events = Events()
    assert await dl.weights_for(FOLDER_ENGINE, SPEC, {}, events) is not None
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
    path = await downloader(tmp_path)[0].weights_for(FOLDER_ENGINE, SPEC, {}, Events())
    assert path is not None
    assert (Path(path) / "model.safetensors").read_bytes() == data
    assert len(hub.ranges) == 1  # asked again only for what was missing
    start = int(hub.ranges[0].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= len(data) // 2


async def test_503_is_retried_with_backoff_then_succeeds(hub: FakeHub, tmp_path: Path) -> None:
    hub.fail_first = 2
    dl, slept = downloader(tmp_path, attempts=3)
    events = Events()
    path = await dl.weights_for(FOLDER_ENGINE, SPEC, {}, events)
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
        await dl.weights_for(FOLDER_ENGINE, SPEC, {}, events)
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
        await dl.weights_for(FOLDER_ENGINE, spec, {}, Events())
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
        await dl.weights_for(FOLDER_ENGINE, SPEC, {}, Events())
    assert "gave up after 2 attempt(s)" in str(info.value)
    assert "Connect" in str(info.value)
    assert slept == [0.5]


async def test_offline_leaves_an_uncached_model_to_the_engine(tmp_path: Path) -> None:
    # conftest's HF_HUB_OFFLINE=1 is in force here: no hub is asked, the launch goes on as before.
    events = Events()
    assert await downloader(tmp_path)[0].weights_for(FOLDER_ENGINE, SPEC, {}, events) is None
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
    assert repo_to_download(BUILTIN[engine], spec, options) == expected


def test_the_engine_says_whether_it_loads_a_folder() -> None:
    """A third-party engine gets downloads by declaring ``loads_weights_folder``, not by its name."""
    spec = ModelSpec(name="m", abilities=("chat",), engines=("mine",), extra={"model_id": REPO})
    assert repo_to_download(StubEngine(name="mine", loads_weights_folder=True), spec, {}) == REPO
    assert repo_to_download(StubEngine(name="transformers", loads_weights_folder=False), spec, {}) is None


class HubOnlyEngine(StubPlugin):
    """A folder engine serving a family that names only a hub repo; records the options it launched with."""

    def __init__(self) -> None:
        self.options: list[dict[str, Any]] = []
        super().__init__(
            [StubEngine(name="transformers", loads_weights_folder=True, on_launch=self._launch)], [SPEC]
        )

    def _launch(self, model: ModelSpec, replica: ReplicaContext) -> LaunchSpec:
        self.options.append(dict(replica.options))
        return LaunchSpec(argv=("worker",), readiness=ReadinessProbe(timeout_s=2, interval_s=0.001))


async def test_launch_downloads_before_replicas_and_passes_model_path(hub: FakeHub, tmp_path: Path) -> None:
    engine = HubOnlyEngine()
    plugins = make_plugin_manager(load_entrypoints=False, plugins=[engine], env={})
    dl, _ = downloader(tmp_path)
    spawner = RecordingSpawner()
    mgr = ModelManager(plugins=plugins, platform=Platform(system="Linux", machine="x86_64",
                                                          python_version="3.11.7"),
                       home=tmp_path, spawner=spawner, stop_grace=0.1, launch_timeout=5,
                       base_env={"PATH": "/bin"}, downloader=dl, replica_factory=FakeReplicas(spawner))
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


# --- CSGHub, through pycsghub (package csghub-sdk) ------------------------------------------------------------------


@pytest.fixture
def client_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """``HOME`` for the hub clients (their default caches and settings live there): nothing lands in the real one."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
async def csg_hub(monkeypatch: pytest.MonkeyPatch, aiohttp_server: ServerFactory, client_home: Path) -> FakeHub:
    pytest.importorskip("pycsghub", reason="the optional CSGHub client: pip install csghub-sdk (in the test extra)")
    import pycsghub.file_download

    fake = FakeHub()
    server = await aiohttp_server(fake.app(prefix="/csg"))
    assert server.host in ("127.0.0.1", "localhost")  # loopback only
    fake.url = f"http://127.0.0.1:{server.port}/"
    for name in ("CSGHUB_TOKEN", "CSGHUB_DOMAIN", "CSGHUB_CACHE"):  # the client's own fallbacks stay out of it
        monkeypatch.delenv(name, raising=False)
    # The client retries a file body itself, 5 times, 0, 2, 4, 8 and 16 s apart (urllib3's Retry); here once, and
    # urllib3's first retry does not wait.
    monkeypatch.setattr(pycsghub.file_download, "API_FILE_DOWNLOAD_RETRY_TIMES", 1)
    return fake


@LEAKY_HUB_CLIENT
async def test_csghub_lands_in_the_cache_sending_the_token(csg_hub: FakeHub, tmp_path: Path,
                                                           client_home: Path) -> None:
    # conftest's HF_HUB_OFFLINE=1 is in force: it is about Hugging Face, not CSGHub (whose client reuses
    # huggingface_hub's types but not its HTTP session).
    dl, slept = downloader(tmp_path, source="csghub", csg_endpoint=csg_hub.url, csg_token="t0ken")
    events = Events()
    path = await dl.weights_for(FOLDER_ENGINE, SPEC, {}, events)
    assert path == str(tmp_path / "models" / "csghub" / REPO)
    for name, data in FILES.items():
        assert (Path(path) / name).read_bytes() == data
    assert (Path(path) / MARKER).is_file()
    assert events.names() == ["downloading", "downloaded"] and slept == []
    assert csg_hub.requests[0] == f"GET /csg/api/models/{REPO}/revision/main"
    assert sorted(csg_hub.fetched) == sorted(FILES)
    assert csg_hub.auth and set(csg_hub.auth) == {"Bearer t0ken"}  # XINFERENCE_CSG_TOKEN, on every request
    # The client's working files stay in the model's folder, not in ~/.cache/csg.
    assert list(client_home.rglob("*")) == []
    assert (Path(path) / ".cache" / "csghub").is_dir()
    assert "downloaded tiny (tiny-org/tiny-model) from csghub: 2 file(s)" in events.items[-1]["message"]

    asked = len(csg_hub.requests)
    again = Events()
    csg = downloader(tmp_path, source="csghub", csg_endpoint=csg_hub.url)[0]
    assert await csg.weights_for(FOLDER_ENGINE, SPEC, {}, again) == path
    assert len(csg_hub.requests) == asked and again.names() == ["download_cached"]


@LEAKY_HUB_CLIENT
async def test_csghub_503_is_retried_then_succeeds(csg_hub: FakeHub, tmp_path: Path) -> None:
    csg_hub.fail_first = 1  # the repo info answers 503 once
    # ...and one file body twice: the client's own retry, then its give-up, which xinfd retries.
    csg_hub.fail_file = {"weights/model.safetensors": 2}
    dl, slept = downloader(tmp_path, source="csghub", csg_endpoint=csg_hub.url, csg_token="t0ken")
    events = Events()
    path = await dl.weights_for(FOLDER_ENGINE, SPEC, {}, events)
    assert path is not None
    for name, data in FILES.items():
        assert (Path(path) / name).read_bytes() == data
    assert events.names() == ["downloading", "download_retry", "downloading", "download_retry",
                              "downloading", "downloaded"]
    assert slept == [0.5, 1.0]
    assert "503" in events.items[1]["message"] and "503" in events.items[3]["message"]
    assert "weights/model.safetensors" in events.items[3]["message"]
    assert csg_hub.fetched.count("config.json") == 1  # a file done by an earlier attempt is not fetched again


@LEAKY_HUB_CLIENT
async def test_csghub_gives_up_after_max_attempts_naming_model_and_source(csg_hub: FakeHub, tmp_path: Path) -> None:
    csg_hub.fail_first = 10
    dl, slept = downloader(tmp_path, attempts=2, source="csghub", csg_endpoint=csg_hub.url, csg_token="t0ken")
    with pytest.raises(DownloadError) as info:
        await dl.weights_for(FOLDER_ENGINE, SPEC, {}, Events())
    message = str(info.value)
    assert message.startswith(f"cannot download model tiny ({REPO}) from csghub: gave up after 2 attempt(s)")
    assert "503" in message
    assert slept == [0.5]
    assert sum(r.endswith("-> 503") for r in csg_hub.requests) == 2
    assert not (tmp_path / "models" / "csghub" / REPO / MARKER).exists()


@LEAKY_HUB_CLIENT
async def test_csghub_unknown_repo_fails_at_once(csg_hub: FakeHub, tmp_path: Path) -> None:
    csg_hub.repos.clear()
    dl, slept = downloader(tmp_path, source="csghub", csg_endpoint=csg_hub.url, csg_token="t0ken")
    with pytest.raises(DownloadError) as info:
        await dl.weights_for(FOLDER_ENGINE, SPEC, {}, Events())
    assert f"tiny ({REPO}) from csghub" in str(info.value) and "404" in str(info.value)
    assert "gave up" not in str(info.value) and slept == []
    assert len(csg_hub.requests) == 1


@LEAKY_HUB_CLIENT
async def test_csghub_progress_counts_the_clients_partial_file(csg_hub: FakeHub, tmp_path: Path) -> None:
    """Regression: pycsghub writes a file under its cache_dir first, which must be inside the model's folder."""
    # The client writes 1 MiB chunks: a 4 MB body paused half-way leaves one on disk meanwhile.
    csg_hub.repos[REPO]["weights/model.safetensors"] = b"\x01" * 4_000_000
    csg_hub.slow_body = 0.5
    dl, _ = downloader(tmp_path, source="csghub", csg_endpoint=csg_hub.url, csg_token="t0ken")
    dl.progress_interval = 0.05
    events = Events()
    assert await dl.weights_for(FOLDER_ENGINE, SPEC, {}, events) is not None
    progress = [e["bytes"] for e in events.items if e["event"] == "download_progress"]
    assert any(0 < size < 4_000_000 for size in progress), progress


# --- ModelScope, through modelscope (and its modelscope_hub) ----------------------------------------------------------


@pytest.fixture
async def ms_hub(monkeypatch: pytest.MonkeyPatch, aiohttp_server: ServerFactory, client_home: Path) -> FakeHub:
    pytest.importorskip("modelscope", reason="the optional ModelScope client: pip install modelscope (in the test "
                        "extra)")
    import modelscope_hub._download
    import modelscope_hub._legacy_api
    import modelscope_hub.config

    fake = FakeHub()
    server = await aiohttp_server(fake.modelscope_app())
    assert server.host in ("127.0.0.1", "localhost")  # loopback only
    fake.url = f"http://127.0.0.1:{server.port}"
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", fake.url)  # the client's own setting
    for name in ("MODELSCOPE_DOMAIN", "MODELSCOPE_API_TOKEN", "MODELSCOPE_CACHE", "MODELSCOPE_HOME"):
        monkeypatch.delenv(name, raising=False)
    # The client builds one process-wide configuration (endpoint, token, cache and settings folders) the first time
    # it is used; each test starts without it, so that this test's HOME counts, and gets the previous one back.
    monkeypatch.setattr(modelscope_hub.config, "_default_config", None)
    # The client retries a listing 4 times and a file 5 times itself; its counts stay, its waits (1 s, 2 s, 4 s...)
    # go, so that the tests stay fast.
    monkeypatch.setattr(modelscope_hub._legacy_api, "REPO_TREE_PAGE_RETRY_MAX_DELAY_SECONDS", 0)
    monkeypatch.setattr(modelscope_hub._download, "DOWNLOAD_RETRY_MAX_DELAY_SECONDS", 0)
    return fake


@LEAKY_HUB_CLIENT
async def test_modelscope_lands_in_the_cache(ms_hub: FakeHub, tmp_path: Path, client_home: Path) -> None:
    ms_hub.fail_first = 1  # the listing answers 503 once: the client retries it itself, below xinfd's retries
    dl, slept = downloader(tmp_path, source="modelscope")
    events = Events()
    path = await dl.weights_for(FOLDER_ENGINE, SPEC, {}, events)
    assert path == str(tmp_path / "models" / "modelscope" / REPO)
    for name, data in FILES.items():
        assert (Path(path) / name).read_bytes() == data
    assert (Path(path) / MARKER).is_file()
    assert events.names() == ["downloading", "downloaded"] and slept == []
    assert [r.endswith("-> 503") for r in ms_hub.requests[:2]] == [True, False]
    assert sorted(ms_hub.fetched) == sorted(FILES)
    # Its lock files stay in the model's folder, not in ~/.cache/modelscope (which it creates, empty). Its settings
    # folder, ~/.modelscope, is the user's (a login lives there); it keeps an install id in it.
    assert [p for p in (client_home / ".cache").rglob("*") if p.is_file()] == []
    assert list((Path(path) / ".cache" / "modelscope" / ".lock").iterdir())

    asked = len(ms_hub.requests)
    again = Events()
    assert await downloader(tmp_path, source="modelscope")[0].weights_for(FOLDER_ENGINE, SPEC, {}, again) == path
    assert len(ms_hub.requests) == asked and again.names() == ["download_cached"]


@LEAKY_HUB_CLIENT
async def test_modelscope_endpoint_is_read_at_each_download(monkeypatch: pytest.MonkeyPatch, ms_hub: FakeHub,
                                                            aiohttp_server: ServerFactory, tmp_path: Path) -> None:
    """Regression: the client keeps the MODELSCOPE_ENDPOINT of its first use for the whole process."""
    assert await downloader(tmp_path, source="modelscope")[0].ensure("tiny", REPO, Events()) is not None
    other = FakeHub(repos={"other-org/other-model": dict(FILES)})
    server = await aiohttp_server(other.modelscope_app())
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", f"http://127.0.0.1:{server.port}")
    assert await downloader(tmp_path, source="modelscope")[0].ensure("other", "other-org/other-model",
                                                                       Events()) is not None
    assert sorted(other.fetched) == sorted(FILES)


@LEAKY_HUB_CLIENT
async def test_modelscope_file_5xx_is_retried_past_the_clients_own_retries(ms_hub: FakeHub,
                                                                            tmp_path: Path) -> None:
    """Regression: the client reports failed files together (``failed_files``), a 503 among them is retried."""
    import modelscope_hub._download

    # One more 503 than the client's own retries: its first call gives up on that file, the second gets it.
    ms_hub.fail_file = {"weights/model.safetensors": modelscope_hub._download.DOWNLOAD_RETRY_TIMES + 1}
    dl, slept = downloader(tmp_path, source="modelscope")
    events = Events()
    path = await dl.weights_for(FOLDER_ENGINE, SPEC, {}, events)
    assert path is not None
    for name, data in FILES.items():
        assert (Path(path) / name).read_bytes() == data
    assert events.names() == ["downloading", "download_retry", "downloading", "downloaded"]
    assert slept == [0.5]
    retry = events.items[1]["message"]
    assert "weights/model.safetensors" in retry and "503" in retry
    assert ms_hub.fetched.count("config.json") == 1  # a file done by the first attempt is kept


@LEAKY_HUB_CLIENT
async def test_modelscope_gives_up_after_max_attempts_naming_model_and_source(ms_hub: FakeHub,
                                                                               tmp_path: Path) -> None:
    import modelscope_hub._legacy_api

    ms_hub.fail_first = 100
    dl, slept = downloader(tmp_path, attempts=2, source="modelscope")
    with pytest.raises(DownloadError) as info:
        await dl.weights_for(FOLDER_ENGINE, SPEC, {}, Events())
    message = str(info.value)
    assert message.startswith(f"cannot download model tiny ({REPO}) from modelscope: gave up after 2 attempt(s)")
    assert "503" in message
    assert slept == [0.5]
    # Each of xinfd's attempts is one call of the client, which tries a listing 4 times itself.
    per_call = modelscope_hub._legacy_api.REPO_TREE_PAGE_MAX_ATTEMPTS
    assert sum(r.endswith("-> 503") for r in ms_hub.requests) == 2 * per_call
    assert not (tmp_path / "models" / "modelscope" / REPO / MARKER).exists()


@LEAKY_HUB_CLIENT
async def test_modelscope_unknown_repo_fails_at_once(ms_hub: FakeHub, tmp_path: Path) -> None:
    ms_hub.repos.clear()
    dl, slept = downloader(tmp_path, source="modelscope")
    with pytest.raises(DownloadError) as info:
        await dl.weights_for(FOLDER_ENGINE, SPEC, {}, Events())
    assert f"tiny ({REPO}) from modelscope" in str(info.value) and "404" in str(info.value)
    assert "gave up" not in str(info.value) and slept == []
    assert len(ms_hub.requests) == 1


@LEAKY_HUB_CLIENT
async def test_modelscope_progress_counts_the_clients_partial_file(ms_hub: FakeHub, tmp_path: Path) -> None:
    ms_hub.repos[REPO]["weights/model.safetensors"] = b"\x01" * 4_000_000  # 1 MiB chunks, as pycsghub
    ms_hub.slow_body = 0.5
    dl, _ = downloader(tmp_path, source="modelscope")
    dl.progress_interval = 0.05
    events = Events()
    assert await dl.weights_for(FOLDER_ENGINE, SPEC, {}, events) is not None
    progress = [e["bytes"] for e in events.items if e["event"] == "download_progress"]
    assert any(0 < size < 4_000_000 for size in progress), progress
