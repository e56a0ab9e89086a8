"""Where the GPU inventory comes from (NVML, the config file, the environment) and why NVML gave none."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from xinfd.gpus import (
    NvmlInventory,
    describe_inventory,
    detect_platform,
    nvml_failure,
    nvml_inventory,
    nvml_library_missing,
)
from xinfd.types import GpuInfo

A100 = GpuInfo(index=0, name="NVIDIA A100-SXM4-80GB", memory_mb=81920)


def no_driver(env: Mapping[str, str]) -> NvmlInventory:
    return NvmlInventory(error="no NVML: driver not found (NVML Shared Library Not Found)")


def asked_nvml(env: Mapping[str, str]) -> NvmlInventory:
    raise AssertionError("NVML must not be asked when GPUs are declared")


class NVMLError_LibraryNotFound(Exception):  # pynvml's own class name, matched by name
    pass


def test_nvml_failures_in_operators_words() -> None:
    assert nvml_failure(NVMLError_LibraryNotFound("NVML Shared Library Not Found")) == (
        "no NVML: driver not found (NVML Shared Library Not Found)"
    )
    assert nvml_failure(RuntimeError("Unknown Error")) == "no NVML: Unknown Error"
    assert nvml_failure(RuntimeError()) == "no NVML: RuntimeError"


def test_no_driver_gives_no_gpu_and_keeps_the_reason() -> None:
    platform = detect_platform((), venv_enabled=True, env={}, nvml=no_driver)
    assert platform.gpus == () and not platform.nvml_available
    assert platform.gpu_source == "NVML"
    assert platform.nvml_error == "no NVML: driver not found (NVML Shared Library Not Found)"
    assert describe_inventory(platform) == "no GPU: no NVML: driver not found (NVML Shared Library Not Found)"


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("env XINFD_GPUS", "environment variable XINFD_GPUS"),
        ("file /etc/xinfd/xinfd.toml", "config file /etc/xinfd/xinfd.toml"),
    ],
)
def test_declared_gpus_replace_nvml_and_say_where_they_come_from(source: str, words: str) -> None:
    platform = detect_platform((A100,), venv_enabled=True, env={}, declared_from=source, nvml=asked_nvml)
    assert platform.gpus == (A100,) and platform.gpu_source == words and platform.nvml_error is None
    assert describe_inventory(platform) == f"1 GPU(s) declared in the {words}"


def test_nvml_that_answers() -> None:
    platform = detect_platform((), venv_enabled=True, env={}, nvml=lambda env: NvmlInventory(gpus=(A100,)))
    assert platform.nvml_available and describe_inventory(platform) == "1 GPU(s) found through NVML"
    empty = detect_platform((), venv_enabled=True, env={}, nvml=lambda env: NvmlInventory())
    assert describe_inventory(empty).startswith("no GPU found through NVML")


def test_the_real_nvml_on_this_host_never_raises() -> None:
    found = nvml_inventory({})
    if found.available:
        pytest.skip("this host has an NVIDIA driver")
    assert found.gpus == ()
    assert found.error is not None and found.error.startswith("no NVML: ")
    assert "nvidia-ml-py is not installed" not in found.error  # a dependency: only the driver can be missing


def test_a_missing_nvml_library_is_known_without_asking_pynvml() -> None:
    """The driver's library is probed with ctypes first: no library, no pynvml import, pynvml's own words."""
    import sys

    assert nvml_library_missing("libxinfd-no-such-library.so.1") == (
        "no NVML: driver not found (NVML Shared Library Not Found)"
    )
    assert nvml_library_missing("libc.so.6") is None  # a library that loads: pynvml is asked
    if nvml_library_missing() is not None and "pynvml" not in sys.modules:
        assert nvml_inventory({}).error == "no NVML: driver not found (NVML Shared Library Not Found)"
        assert "pynvml" not in sys.modules
