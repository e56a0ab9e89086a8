"""The worker pins itself to the cores of its CPU share before the engine loads, and survives a refusal."""

from __future__ import annotations

import logging
import os

import pytest

import xinfd.worker.__main__ as worker_main
from xinfd.types import ReplicaContext


def context(affinity: tuple[int, ...], threads: int = 1) -> ReplicaContext:
    return ReplicaContext(model_uid="m", model_name="m", engine="echo", replica_index=0, socket_path="/x.sock",
                          python="python", cpu_threads=threads, cpu_affinity=affinity)


def test_the_worker_pins_to_its_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, tuple[int, ...]]] = []
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cores: calls.append((pid, tuple(cores))))
    worker_main.pin_to_cores(context((2, 3), threads=2))
    assert calls == [(0, (2, 3))]
    worker_main.pin_to_cores(context(()))  # not pinned: the kernel's scheduler places it
    assert calls == [(0, (2, 3))]


def test_a_refused_pin_is_logged_not_fatal(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def refuse(pid: int, cores: object) -> None:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    with caplog.at_level(logging.WARNING, logger="xinfd.worker"):
        worker_main.pin_to_cores(context((7,)))
    assert "cannot pin to cores [7]" in caplog.text
