"""A newcomer's path: the README's first command, run verbatim from a fresh clone, installs xinfd and serves
SmolLM2 from that clone's venv (not from this checkout, whose venv and path the command never sees).

Only the environment differs from a newcomer's shell: the home is a temp dir and ``XINFD_PORT=0`` picks a free
port (other runs share this machine's 9997). Measured on 2 cores: install 48-78 s, READY 20-43 s later, first
answer (16 tokens) 0.7-5 s; the test prints its own timings (``pytest -s``)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from openai import OpenAI

from tests.installed.wheelhouse import REPO, outside_env, wait_for

pytestmark = [pytest.mark.installed, pytest.mark.slow]


def first_command() -> str:
    block = re.search(r"```sh\n(.+?)\n```", (REPO / "README.md").read_text(), re.S)
    assert block, "the README has no sh block"
    return block.group(1).strip()


def test_readme_first_command_serves_smollm2_from_a_fresh_clone(installed: object, tmp_path: Path) -> None:
    # ``installed`` only gates the test into the installed lane (pytest -m installed).
    command = first_command()
    assert command.endswith(".venv/bin/xinfd --launch smollm2-135m-instruct"), command
    clone, home = tmp_path / "clone", tmp_path / "home"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], check=True, timeout=300)
    env = outside_env({"XINFERENCE_HOME": str(home), "XINFD_PORT": "0", "OMP_NUM_THREADS": "1",
                       "HF_HUB_OFFLINE": "1"})
    log = tmp_path / "readme.log"
    started = time.monotonic()
    with log.open("wb") as sink:
        proc = subprocess.Popen(["bash", "-c", command], cwd=clone, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        def serving() -> bool:
            assert proc.poll() is None, log.read_text(errors="replace")
            return "serving on" in log.read_text(errors="replace")

        wait_for(serving, 900, "the README's command serving", interval=0.5)
        installed_s = time.monotonic() - started
        xinfctl = clone / ".venv" / "bin" / "xinfctl"

        def ctl(*args: str) -> str:
            done = subprocess.run([str(xinfctl), *args, "--json"], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=120, check=True)
            return done.stdout

        endpoint = json.loads(ctl("status"))["endpoint"]

        def ready() -> bool:
            models = json.loads(ctl("list"))
            return any(m["model_uid"] == "smollm2-135m-instruct" and m["state"] == "READY" for m in models)

        wait_for(ready, 300, "smollm2-135m-instruct READY", interval=0.5)
        ready_s = time.monotonic() - started - installed_s
        asked = time.monotonic()
        with OpenAI(base_url=f"{endpoint}/v1", api_key="unused", timeout=120) as client:
            reply = client.chat.completions.create(
                model="smollm2-135m-instruct",
                messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
                temperature=0, max_tokens=16,
            )
        answer_s = time.monotonic() - asked
        assert "Paris" in (reply.choices[0].message.content or ""), reply
        # Served from the clone's install: its venv's interpreter runs the daemon, its package is imported.
        probe = subprocess.run(
            [str(clone / ".venv" / "bin" / "python"), "-c", "import xinfd.registry as r; print(r.BUILTIN_DIR)"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True,
        )
        builtin = Path(probe.stdout.strip()).resolve()
        assert builtin.is_relative_to(clone.resolve()) and not builtin.is_relative_to(REPO), builtin
        daemon = _daemon_pid(proc.pid)
        daemon_exe = Path(f"/proc/{daemon}/cmdline").read_bytes().split(b"\0")[0].decode()
        assert Path(daemon_exe).is_relative_to(clone), daemon_exe
        print(f"\nREADME first command: install {installed_s:.0f} s, READY {ready_s:.0f} s later, "
              f"first answer {answer_s:.1f} s")
        os.kill(daemon, signal.SIGTERM)  # Ctrl-C / SIGTERM, as the README says: exit 0
        assert proc.wait(timeout=60) == 0, log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            os.kill(_daemon_pid(proc.pid), signal.SIGKILL)
            proc.kill()
            proc.wait()


def _daemon_pid(shell: int) -> int:
    """bash execs the last command of the ``&&`` chain (then ``shell`` is xinfd) or runs it as its child."""
    if Path(f"/proc/{shell}/comm").read_text().strip() != "bash":
        return shell
    (child,) = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
    return int(child)
