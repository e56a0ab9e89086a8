"""Model downloads at launch: a family that names only a hub repo (``extra.model_id``) gets a local folder.

"Model sources": engines that load a folder (``Engine.loads_weights_folder``: transformers,
sentence-transformers, vLLM, SGLang, mlx) are handed ``$XINFERENCE_HOME/models/<source>/<repo id>`` through
the launch option ``model_path``, filled from the hub named by ``XINFERENCE_MODEL_SRC`` with that hub's own
client library:

- **huggingface**: ``huggingface_hub.snapshot_download(local_dir=..., endpoint=...)``; the endpoint is
  ``HF_ENDPOINT`` if set, else the public hub. Interrupted files resume (the library keeps ``*.incomplete``
  parts under ``<folder>/.cache/huggingface``).
- **modelscope**: ``modelscope.snapshot_download(local_dir=..., endpoint=...)``; the endpoint is the client's own
  ``MODELSCOPE_ENDPOINT``, read at each download (the client itself keeps the value of its first use for the
  whole process), else the client's default (it probes modelscope.cn, then modelscope.ai). Its lock files go to
  ``<folder>/.cache/modelscope`` (not ``~/.cache/modelscope``), its ``*.incomplete`` parts beside their files.
- **csghub**: ``pycsghub``'s ``snapshot_download(local_dir=..., endpoint=XINFERENCE_CSG_ENDPOINT,
  token=XINFERENCE_CSG_TOKEN)``; its file index and temporary parts go to ``<folder>/.cache/csghub`` (not
  ``~/.cache/csg``), inside the folder so that the progress events see the bytes arrive.

Both are optional packages (extras ``modelscope`` and ``csghub``: ``pip install modelscope`` / ``csghub-sdk``;
together about 150 MB with their dependencies, no torch); without them the launch fails naming the package.
The daemon does not depend on them: most installs never use those hubs.

A finished download leaves a marker file, so a later launch (or a daemon restart) uses the folder without
asking the hub anything — serving must not depend on the hub being up. ``HF_HUB_OFFLINE=1`` means "never ask
Hugging Face": an unfinished model is then left to the engine's own resolution (the repo id, loaded from the
engine's Hugging Face cache), which is what launches did before this module existed.

Retries: a 5xx/408/429 answer or a connection error is retried, ``XINFERENCE_DOWNLOAD_MAX_ATTEMPTS`` tries
in all, with a short exponential backoff; anything else (unknown repo, 401, a bad revision) fails at once,
because asking again cannot change the answer. The clients also retry on their own below that (modelscope: 4
tries per listing, 5 per file; pycsghub: 5 per file), so one of xinfd's attempts can take a while. A client that
reports its failed files together (modelscope's ``failed_files``) is retried when every one of them is
retryable; the files already done are kept, so the next attempt fetches only the rest. The blocking client runs in
a worker thread; the daemon imports no hub library at module level (``tests/unit/test_daemon_imports.py``).

Just over 400 lines: the three hub clients share one retry, resume and marker discipline that is clearer read
in one place than split across modules.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xinfd.atomic import DEFAULT, write_atomic
from xinfd.errors import DownloadError
from xinfd.events import (
    DownloadCached,
    Downloaded,
    Downloading,
    DownloadProgress,
    DownloadRetry,
    DownloadSkipped,
    Publish,
)
from xinfd.types import ModelSpec

if TYPE_CHECKING:
    from xinfd.config import Settings
    from xinfd.hookspecs import Engine

log = logging.getLogger(__name__)

HF_PUBLIC_ENDPOINT = "https://huggingface.co"
MARKER = ".xinfd-download.json"
# HTTP statuses that say "try again later" rather than "no".
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Exception class names (anywhere in the MRO) of transport failures: requests, httpx and httpx2 name them the
# same way, and matching names keeps this module independent of which HTTP stack the hub library uses.
_TRANSPORT_ERRORS = frozenset({
    "ConnectError", "ConnectTimeout", "ReadTimeout", "TimeoutException", "NetworkError",
    "RemoteProtocolError", "ReadError", "WriteError", "ConnectionError", "ChunkedEncodingError",
    "ProtocolError", "TimeoutError",
})

# A blocking download of one repo into a folder; returns the folder holding the files.
Fetcher = Callable[["DownloadSettings", str, Path], Path]


@dataclass(frozen=True, slots=True, kw_only=True)
class DownloadSettings:
    """What a download needs from the settings (a slice, so tests build it without a full ``Settings``)."""

    source: str
    cache_root: Path  # $XINFERENCE_HOME/models; a model lands in <cache_root>/<source>/<repo id>
    max_attempts: int = 3
    backoff: float = 1.0  # seconds before the 2nd attempt, doubled each time after
    csg_token: str | None = None
    csg_endpoint: str = "https://hub-stg.opencsg.com/"

    @classmethod
    def from_settings(cls, settings: Settings) -> DownloadSettings:
        return cls(
            source=settings.model_src,
            cache_root=settings.home / "models",
            max_attempts=settings.download_max_attempts,
            csg_token=settings.csg_token,
            csg_endpoint=settings.csg_endpoint,
        )

    def folder(self, repo_id: str) -> Path:
        return self.cache_root / self.source / repo_id


def repo_to_download(engine: Engine, spec: ModelSpec, options: Mapping[str, Any]) -> str | None:
    """The hub repo to fetch for this launch, or None when the engine already knows where the weights are.

    Only engines that load a folder of weights (``Engine.loads_weights_folder``) get one: llama.cpp needs one
    ``.gguf`` file, and a repo snapshot may hold a dozen quantizations; picking one is the user's call
    (``model_path``). Same precedence as the engines' ``weights_location``: a launch option or spec path, or a
    file shipped in a package, wins over the hub id, so a download happens only when the hub id is all there is.
    """
    if not engine.loads_weights_folder:
        return None
    if any(v is not None for v in (options.get("model_path"), spec.extra.get("model_path"),
                                    spec.extra.get("package_file"))):
        return None
    repo_id = spec.extra.get("model_id")
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or ".." in repo_id or repo_id.startswith("/"):
        return None  # not a hub id (an engine-specific name, or nothing); leave it to the engine
    return repo_id


def repo_on_source(spec: ModelSpec, repo_id: str, source: str) -> str:
    """The id of ``repo_id`` on ``source``: hubs name one model differently (``qwen/`` vs ``Qwen/`` on
    ModelScope, ``LLM-Research/`` for Llama), and the families list both per format, with ``{size}`` slots.

    ``extra.model_id`` is a Hugging Face id; the format whose ``huggingface`` template matches it gives the
    size, which fills the same format's template for ``source``. No match: the same id on every hub.
    """
    if source == "huggingface":
        return repo_id
    formats = spec.extra.get("formats")
    for entry in formats if isinstance(formats, list) else []:
        sources = entry.get("sources") if isinstance(entry, dict) else None
        if not isinstance(sources, dict):
            continue
        hf, other = sources.get("huggingface"), sources.get(source)
        if not isinstance(hf, str) or not isinstance(other, str):
            continue
        match = re.fullmatch(re.escape(hf).replace(r"\{size\}", "(?P<size>[^/]+?)"), repo_id)
        if match is not None:
            return other.replace("{size}", match.groupdict().get("size") or "")
    return repo_id


def hf_offline() -> bool:
    """``HF_HUB_OFFLINE`` read now, not at import, so a daemon started with it set is honoured per launch."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or HF_PUBLIC_ENDPOINT


def fetch_huggingface(settings: DownloadSettings, repo_id: str, dest: Path) -> Path:
    try:
        from huggingface_hub import snapshot_download  # lazy: only a launch that downloads pays the import
        from huggingface_hub.utils.tqdm import disable_progress_bars
    except ImportError as exc:
        raise DownloadError("downloading from Hugging Face needs the huggingface_hub package in the daemon's "
                            "environment (pip install huggingface_hub)") from exc
    # tqdm bars would land in the daemon's log (the journal) as carriage-return noise; the launch events
    # ("download_progress") report the bytes instead.
    disable_progress_bars()

    # max_workers=2: these machines have 2 cores, and the daemon keeps serving other models meanwhile.
    path = snapshot_download(repo_id, local_dir=dest, endpoint=hf_endpoint(), max_workers=2)
    return Path(path)


def modelscope_endpoint() -> str | None:
    """``MODELSCOPE_ENDPOINT`` read now: the client reads it once per process, into a configuration it keeps."""
    return os.environ.get("MODELSCOPE_ENDPOINT", "").strip().rstrip("/") or None


def fetch_modelscope(settings: DownloadSettings, repo_id: str, dest: Path) -> Path:
    try:
        # Optional and untyped: "not found" without it, "untyped" with it; either way Any here.
        from modelscope import snapshot_download  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError as exc:
        raise DownloadError("XINFERENCE_MODEL_SRC=modelscope needs the modelscope package "
                            "(pip install modelscope, or the xinfd[modelscope] extra)") from exc
    # cache_dir: with local_dir set the client keeps only lock files there, by default in ~/.cache/modelscope.
    path = snapshot_download(repo_id, local_dir=str(dest), cache_dir=str(dest / ".cache" / "modelscope"),
                             endpoint=modelscope_endpoint(), max_workers=2)
    return Path(path)


def fetch_csghub(settings: DownloadSettings, repo_id: str, dest: Path) -> Path:
    try:
        from pycsghub.snapshot_download import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
            snapshot_download,  # optional and untyped, as modelscope
        )
    except ImportError as exc:
        raise DownloadError("XINFERENCE_MODEL_SRC=csghub needs the csghub-sdk package "
                            "(pip install csghub-sdk, or the xinfd[csghub] extra)") from exc
    # CSGHub speaks the Hugging Face API under /csg. pycsghub writes each file under cache_dir/temp, then moves it
    # into local_dir; inside the folder, _watched counts those bytes (and _folder_size skips .cache).
    path = snapshot_download(repo_id, local_dir=str(dest), cache_dir=str(dest / ".cache" / "csghub"),
                             endpoint=settings.csg_endpoint.rstrip("/"), token=settings.csg_token,
                             max_workers=2, quiet=True)
    return Path(path)


FETCHERS: Mapping[str, Fetcher] = {
    "huggingface": fetch_huggingface,
    "modelscope": fetch_modelscope,
    "csghub": fetch_csghub,
}


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes: hub libraries wrap the HTTP error that says whether to retry."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _failed_files(exc: BaseException) -> dict[str, BaseException]:
    """The per-file errors of a failure reported for several files at once (modelscope's ``FileDownloadError``
    has ``failed_files``, path -> error, and no cause); empty for any other exception."""
    failed = getattr(exc, "failed_files", None)
    if not isinstance(failed, Mapping):
        return {}
    return {str(path): error for path, error in failed.items() if isinstance(error, BaseException)}


def is_retryable(exc: BaseException) -> bool:
    """A 5xx/408/429 or a transport failure anywhere in the chain; a definite 4xx answer wins over it.

    Failed files reported together are retryable when each of them is: one "no" means the next attempt fails too.
    """
    if isinstance(exc, DownloadError):
        return False
    for link in _chain(exc):
        status = _status(link)
        if status is not None:
            return status in RETRY_STATUSES
        failed = _failed_files(link)
        if failed:
            return all(is_retryable(error) for error in failed.values())
        if any(cls.__name__ in _TRANSPORT_ERRORS for cls in type(link).__mro__):
            return True
    return False


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def describe(exc: BaseException) -> str:
    """One line for the launch error: the HTTP answer if there was one, else the innermost cause; for failed
    files reported together, the first of them and its own description."""
    chain = _chain(exc)
    chosen = next((e for e in chain if _status(e) is not None or _failed_files(e)), chain[-1])
    failed = _failed_files(chosen)
    if failed:
        path, error = next(iter(failed.items()))
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        return f"{type(chosen).__name__}: {_first_line(chosen)}; {path}{more}: {describe(error)}"
    return f"{type(chosen).__name__}: {_first_line(chosen)}"


@dataclass(slots=True, kw_only=True)
class Downloader:
    """Fetches hub repos into the cache (one download per folder at a time), with retries and progress."""

    settings: DownloadSettings
    fetchers: Mapping[str, Fetcher] = field(default_factory=lambda: dict(FETCHERS))
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    progress_interval: float = 5.0  # seconds between "download_progress" events while bytes arrive
    _locks: dict[Path, asyncio.Lock] = field(default_factory=dict)

    async def weights_for(self, engine: Engine, spec: ModelSpec, options: Mapping[str, Any],
                          publish: Publish) -> str | None:
        """The folder to pass as ``model_path``, or None to leave the weights to the engine as before."""
        repo_id = repo_to_download(engine, spec, options)
        if repo_id is None:
            return None
        return await self.ensure(spec.name, repo_on_source(spec, repo_id, self.settings.source), publish)

    async def ensure(self, model_name: str, repo_id: str, publish: Publish) -> str | None:
        source = self.settings.source
        dest = self.settings.folder(repo_id)
        # Two launches of one repo share the download instead of writing the same files twice.
        async with self._locks.setdefault(dest, asyncio.Lock()):
            done = _read_marker(dest)
            if done is not None:
                await publish(DownloadCached(message=f"{repo_id} ({source}) cached at {done}"))
                return done
            if source == "huggingface" and hf_offline():
                await publish(DownloadSkipped(message=f"HF_HUB_OFFLINE is set: {repo_id} is not downloaded; "
                                              "the engine looks for it in its own Hugging Face cache"))
                return None
            return await self._download(model_name, repo_id, dest, publish)

    async def _download(self, model_name: str, repo_id: str, dest: Path, publish: Publish) -> str:
        source = self.settings.source
        fetch = self.fetchers.get(source)
        if fetch is None:
            raise DownloadError(f"model {model_name}: unknown model source {source!r} "
                                f"(known: {', '.join(sorted(self.fetchers))})")
        attempts = self.settings.max_attempts
        where = f"{model_name} ({repo_id}) from {source}"
        for attempt in range(1, attempts + 1):
            await publish(Downloading(attempt=attempt,
                                      message=f"downloading {where} into {dest} (attempt {attempt}/{attempts})"))
            started = time.monotonic()
            dest.mkdir(parents=True, exist_ok=True)
            try:
                # A thread, because the hub clients block; a cancelled launch leaves it to finish into the
                # cache (a resumable, harmless write) instead of killing it half-way.
                path = await self._watched(asyncio.to_thread(fetch, self.settings, repo_id, dest), dest,
                                           where, publish)
            except Exception as exc:
                reason = describe(exc)
                if isinstance(exc, DownloadError):
                    raise
                if not is_retryable(exc):
                    raise DownloadError(f"cannot download model {where}: {reason}") from exc
                if attempt == attempts:
                    raise DownloadError(f"cannot download model {where}: gave up after {attempts} "
                                        f"attempt(s); last error: {reason}") from exc
                delay = self.settings.backoff * 2 ** (attempt - 1)
                log.warning("download of %s failed (attempt %d/%d, retry in %.1fs): %s",
                            where, attempt, attempts, delay, reason)
                await publish(DownloadRetry(attempt=attempt,
                                            message=f"download of {where} failed ({reason}); retrying in {delay:.1f}s"))
                await self.sleep(delay)
                continue
            size, count = _folder_size(path)
            _write_marker(dest, path, source=source, repo_id=repo_id)
            await publish(Downloaded(message=f"downloaded {where}: {count} file(s), {size / 1e6:.1f} MB "
                                     f"in {time.monotonic() - started:.1f}s"))
            return str(path)
        raise AssertionError("unreachable: the loop returns or raises")  # max_attempts >= 1 (config check)


    async def _watched(self, work: Awaitable[Path], dest: Path, where: str, publish: Publish) -> Path:
        """Run ``work``, publishing the bytes on disk now and then.

        Measured on disk (partial files included) rather than through a client's progress callback: the
        three hub libraries report progress three different ways, but all of them write under ``dest``.
        """
        task = asyncio.ensure_future(work)
        # A cancelled launch stops waiting, but the thread finishes anyway: collect its outcome so that a
        # late failure is not reported as "exception never retrieved".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        last = _bytes_under(dest)
        while True:
            done, _ = await asyncio.wait({task}, timeout=self.progress_interval)
            if done:
                return task.result()
            now = _bytes_under(dest)
            if now != last:
                last = now
                await publish(DownloadProgress(bytes=now,
                                               message=f"downloading {where}: {now / 1e6:.1f} MB so far"))


def _bytes_under(path: Path) -> int:
    try:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    except OSError:  # a file renamed or removed while we walk: report it next time
        return 0


def _folder_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file() and ".cache" not in p.relative_to(path).parts]
    return sum(p.stat().st_size for p in files), len(files)


def _read_marker(dest: Path) -> str | None:
    """The folder of a finished download, if its marker is there and the folder still exists."""
    try:
        data = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return None
    path = data.get("path") if isinstance(data, dict) else None
    return path if isinstance(path, str) and Path(path).is_dir() else None


def _write_marker(dest: Path, path: Path, *, source: str, repo_id: str) -> None:
    """Written last and atomically: its presence means every file of the snapshot is in place."""
    record = {"source": source, "repo_id": repo_id, "path": str(path), "time": round(time.time(), 3)}
    write_atomic(dest / MARKER, json.dumps(record) + "\n", mode=DEFAULT)
