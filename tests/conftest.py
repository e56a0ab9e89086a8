"""Test-wide settings: no model hub, one thread per replica (2-core CI machines)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


import importlib.util  # noqa: E402  (after the environment defaults above, on purpose)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def llama_cpp_available() -> None:
    """llama-cpp-python importable in the test environment (built once from source into a wheel cache)."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")
