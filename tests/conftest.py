"""Test-wide settings: no model hub, one thread per replica (2-core CI machines)."""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def llama_cpp_available() -> None:
    """llama-cpp-python importable in the test environment: built from source once, the daemon's way, into a
    wheel cache kept between runs (``tests/source_wheels.py``). ``XINFD_TEST_SOURCE_BUILDS=0`` skips instead
    (a quick local run); otherwise a failed build fails the tests that need it, with the reason."""
    if importlib.util.find_spec("llama_cpp") is not None:
        return
    if os.environ.get("XINFD_TEST_SOURCE_BUILDS") == "0":
        pytest.skip("llama-cpp-python not installed and XINFD_TEST_SOURCE_BUILDS=0")
    from tests.source_wheels import ensure_llama_cpp

    try:
        problem = ensure_llama_cpp()
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        pytest.fail(f"could not provide llama-cpp-python: {problem}")
