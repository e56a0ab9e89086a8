"""Three xinfd daemons behind Debian's HAProxy, configured by the shipped contrib/haproxy files.

Placement (echo engine under different uids): ``alpha`` on d1 only, ``beta`` on d2 only, ``shared`` on all
three. The tests run in file order on one cluster; each leaves it whole (a stopped daemon is restarted).
They show routing by the body's ``model``, an even spread within a pool, a drained daemon finishing its
streams while new requests go elsewhere, a killed daemon costing no request that had not started, and a
restarted daemon rejoining. Each scenario prints its counts (sent, answered, failed).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.balancer import Haproxy, free_port, haproxy_binary, http_status
from tests.integration.conftest import Daemon, daemon_env, wait_for

BINARY = haproxy_binary()
pytestmark = pytest.mark.skipif(
    BINARY is None, reason="haproxy is not installed (Debian: apt-get install haproxy; .ci/run installs it)"
)

PLACEMENT = {"d1": ("alpha", "shared"), "d2": ("beta", "shared"), "d3": ("shared",)}
DELAY = "0.05"  # seconds per echoed token of "shared": a 40-word prompt streams for ~2 s
GRACE = 1.5  # XINFD_DRAIN_GRACE: above the checks' inter x fall (300 ms x 2)


@dataclass
class Cluster:
    daemons: dict[str, Daemon]
    ports: dict[str, int]
    lb: Haproxy

    def restart(self, name: str) -> None:
        """Start ``name`` again on its port; its models come back from its state.json."""
        daemon = self.daemons[name]
        daemon.start("--port", str(self.ports[name]))
        for uid in PLACEMENT[name]:
            wait_for(lambda u=uid: http_status(f"{daemon.endpoint}/health/models/{u}") == 200, timeout=60)  # type: ignore[misc]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("balancer")
    daemons: dict[str, Daemon] = {}
    ports = {name: free_port() for name in PLACEMENT}
    lb: Haproxy | None = None
    try:
        for name, models in PLACEMENT.items():
            home = root / name
            home.mkdir()
            env = daemon_env(
                home, {"XINFD_DAEMON_NAME": name, "XINFD_DRAIN_GRACE": str(GRACE), "XINFD_DRAIN_TIMEOUT": "30"}
            )
            daemon = daemons[name] = Daemon(home=home, socket=home / "xinfd.sock", env=env)
            daemon.start("--port", str(ports[name]))
            for uid in models:
                extra = ["--delay", DELAY] if uid == "shared" else []
                daemon.xinfctl("launch", "-n", "echo", "-u", uid, "-r", "1", *extra, "--json")
        servers = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        lb = Haproxy(workdir=root / "haproxy", servers=servers)
        assert BINARY is not None
        lb.start(BINARY)
        for name, models in PLACEMENT.items():
            for uid in models:
                lb.wait_state(f"xinfd_model_{uid}", name, "UP")
        yield Cluster(daemons=daemons, ports=ports, lb=lb)
    finally:
        if lb is not None:
            lb.stop()
        for daemon in daemons.values():
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.proc.send_signal(signal.SIGTERM)
                try:
                    daemon.proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    daemon.proc.kill()
                    daemon.proc.wait()


@dataclass
class Answer:
    status: int
    host: str
    replica: str
    text: str
    started: float
    done: bool = False  # streams: the [DONE] frame arrived


def chat(uid: str, words: int = 1, stream: bool = False) -> dict[str, Any]:
    content = " ".join(f"w{i}" for i in range(words))
    return {"model": uid, "messages": [{"role": "user", "content": content}], "stream": stream}


async def send(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Answer:
    started = time.monotonic()
    try:
        async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
            host = resp.headers.get("X-Xinfd-Host", "")
            replica = resp.headers.get("X-Xinfd-Replica", "")
            if not body.get("stream"):
                return Answer(resp.status, host, replica, await resp.text(), started)
            frames, done = [], False
            async for line in resp.content:
                if line.startswith(b"data: [DONE]"):
                    done = True
                elif line.startswith(b"data: "):
                    delta = json.loads(line[6:])["choices"][0].get("delta", {})
                    frames.append(delta.get("content") or "")
            return Answer(resp.status, host, replica, "".join(frames), started, done)
    except aiohttp.ClientError as exc:
        return Answer(0, "", "", repr(exc), started)


def report(scenario: str, answers: list[Answer]) -> None:
    failed = [a for a in answers if a.status != 200]
    print(f"\n{scenario}: sent {len(answers)}, answered {len(answers) - len(failed)}, failed {len(failed)}")


async def test_routes_by_the_model_in_the_body(cluster: Cluster) -> None:
    url = cluster.lb.url
    async with aiohttp.ClientSession() as session:
        alpha = [await send(session, url, chat("alpha", 2)) for _ in range(6)]
        beta = [await send(session, url, chat("beta", 2)) for _ in range(6)]
        ghost = await send(session, url, chat("ghost"))
        async with session.get(f"{url}/v1/models/beta") as resp:
            assert resp.status == 200 and resp.headers["X-Xinfd-Host"] == "d2"
    report("routing", [*alpha, *beta])
    assert {(a.status, a.host) for a in alpha} == {(200, "d1")}, alpha
    assert {(a.status, a.host) for a in beta} == {(200, "d2")}, beta
    assert json.loads(alpha[0].text)["choices"][0]["message"]["content"] == "w0 w1"
    assert ghost.status == 404 and json.loads(ghost.text)["error"]["code"] == "model_not_found"
    assert alpha[0].replica.startswith("alpha")


async def test_spreads_a_pool_evenly(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as session:
        answers: list[Answer] = []
        for _ in range(12):  # bursts of 3 concurrent requests
            answers += await asyncio.gather(*(send(session, cluster.lb.url, chat("shared")) for _ in range(3)))
    report("spread", answers)
    assert all(a.status == 200 for a in answers), answers
    hosts = Counter(a.host for a in answers)
    replicas = Counter(f"{a.host}/{a.replica}" for a in answers)
    print(f"spread by host: {dict(hosts)}; by replica: {dict(replicas)}")
    assert set(hosts) == {"d1", "d2", "d3"}
    assert min(hosts.values()) >= 8, hosts  # 36 requests, 12 each when perfectly even


async def test_drained_daemon_finishes_its_streams_while_new_requests_go_elsewhere(cluster: Cluster) -> None:
    url, target = cluster.lb.url, cluster.daemons["d3"]
    async with aiohttp.ClientSession() as session:
        streams = [asyncio.create_task(send(session, url, chat("shared", 40, stream=True))) for _ in range(6)]
        await asyncio.sleep(0.5)  # every stream has started generating (first tokens after 50 ms)
        assert target.proc is not None
        target.proc.send_signal(signal.SIGTERM)
        drained_at = time.monotonic()
        fresh: list[Answer] = []
        while time.monotonic() - drained_at < GRACE + 1.5:  # the grace, then refusals, then the stop
            fresh += await asyncio.gather(*(send(session, url, chat("shared")) for _ in range(2)))
            await asyncio.sleep(0.02)
        finished = await asyncio.gather(*streams)
    assert target.proc.wait(timeout=40) == 0
    report("drain: streams in flight", finished)
    report("drain: new requests", fresh)
    on_target = [s for s in finished if s.host == "d3"]
    assert on_target, [s.host for s in finished]  # leastconn put some of the streams on d3
    for stream in finished:
        assert (stream.status, stream.done) == (200, True), stream
        assert stream.text == " ".join(f"w{i}" for i in range(40))
    assert all(a.status == 200 for a in fresh), [a for a in fresh if a.status != 200]
    late = [a for a in fresh if a.started > drained_at + GRACE]
    assert late and all(a.host != "d3" for a in late), [(a.host, a.started - drained_at) for a in late]
    in_grace = sum(1 for a in fresh if a.host == "d3")
    print(
        f"drain: {len(on_target)} stream(s) finished on d3; {in_grace} new request(s) still served by d3 before "
        f"HAProxy saw its health check fail; {len(late)} request(s) after the grace, none on d3"
    )

    cluster.restart("d3")  # rejoins
    cluster.lb.wait_state("xinfd_model_shared", "d3", "UP")


async def test_killed_daemon_costs_no_request_that_had_not_started(cluster: Cluster) -> None:
    url, target = cluster.lb.url, cluster.daemons["d3"]
    assert target.proc is not None
    target.proc.send_signal(signal.SIGKILL)
    target.proc.wait(timeout=10)
    async with aiohttp.ClientSession() as session:
        answers: list[Answer] = []
        for _ in range(10):  # sent at once after the kill: HAProxy has not noticed yet
            answers += await asyncio.gather(*(send(session, url, chat("shared")) for _ in range(3)))
        report("kill", answers)
        assert all(a.status == 200 for a in answers), [a for a in answers if a.status != 200]
        assert {a.host for a in answers} <= {"d1", "d2"}
        cluster.lb.wait_state("xinfd_model_shared", "d3", "DOWN")

        cluster.restart("d3")
        cluster.lb.wait_state("xinfd_model_shared", "d3", "UP")
        rejoined: list[Answer] = []
        for _ in range(6):
            rejoined += await asyncio.gather(*(send(session, url, chat("shared")) for _ in range(3)))
    report("rejoin", rejoined)
    assert all(a.status == 200 for a in rejoined)
    assert Counter(a.host for a in rejoined)["d3"] >= 3, Counter(a.host for a in rejoined)


def test_shipped_config_is_the_render_of_its_example(tmp_path: Path) -> None:
    """The shipped haproxy.cfg is render.py's output for the README's example, and HAProxy accepts it."""
    from tests.integration.balancer import RENDER

    shipped = RENDER.with_name("haproxy.cfg")
    out = tmp_path / "haproxy.cfg"
    args = ["--server", "gpu-a=10.0.0.11:9997", "--server", "gpu-b=10.0.0.12:9997"]
    args += ["--server", "gpu-c=10.0.0.13:9997", "--model", "llama-3.1-8b=gpu-a,gpu-b"]
    args += ["--model", "qwen2.5-7b=gpu-b,gpu-c", "-o", str(out)]
    subprocess.run([sys.executable, str(RENDER), *args], check=True, timeout=30)
    assert out.read_text() == shipped.read_text()
    assert BINARY is not None
    check = subprocess.run([BINARY, "-c", "-f", str(shipped)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    bad = subprocess.run([sys.executable, str(RENDER), "--server", "x"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "NAME=HOST:PORT" in bad.stderr
