"""The pure rules behind the hostile-input suite: direct references, loader variables, Host names, exit codes."""

from __future__ import annotations

import pytest

from xinfd.api.browser import BrowserPolicy, split_host
from xinfd.cli.client import exit_code_for_event
from xinfd.supervisor.launch_request import is_loader_variable
from xinfd.venvs.spec import direct_reference


@pytest.mark.parametrize("entry", ["x @ file:///a", "x@https://h/x.whl", "./x", "/a/b", "x.whl", "x.tar.gz",
                                   "git+https://h/x"])
def test_direct_references_and_paths_are_recognised(entry: str) -> None:
    assert direct_reference(entry) is not None


@pytest.mark.parametrize("entry", ["torch>=2", "x[extra]==1; python_version>'3'", "#vllm_dependencies#",
                                   "#system_torch#", "--index-url=http://x"])
def test_requirements_placeholders_and_options_are_not_references(entry: str) -> None:
    assert direct_reference(entry) is None


def test_loader_variables() -> None:
    assert all(map(is_loader_variable, ["PATH", "HOME", "LD_PRELOAD", "DYLD_INSERT_LIBRARIES", "PYTHONPATH",
                                        "PYTHONSTARTUP", "PYTHONWARNINGS"]))
    assert not any(map(is_loader_variable, ["PYTHONUNBUFFERED", "OMP_NUM_THREADS", "HF_TOKEN"]))


def test_host_rules_on_a_loopback_and_a_wildcard_bind() -> None:
    assert split_host("[::1]:9997") == ("::1", "9997") and split_host("Example.COM.:80") == ("example.com", "80")
    local = BrowserPolicy(bind_host="127.0.0.1")
    assert local.host_allowed("localhost:1") and local.host_allowed("127.0.0.1") and local.host_allowed(None)
    assert not local.host_allowed("evil.example") and not local.host_allowed("10.0.0.5")
    wildcard = BrowserPolicy(bind_host="0.0.0.0", names=("*.corp",))
    assert wildcard.host_allowed("10.0.0.5:9997") and wildcard.host_allowed("a.corp")
    assert not wildcard.host_allowed("xinfd") and not wildcard.host_allowed("corp")
    assert BrowserPolicy(bind_host="::", keys_set=True).host_allowed("xinfd")


def test_refusals_during_a_launch_exit_2_and_failures_1() -> None:
    assert exit_code_for_event({"event": "error", "code": "invalid_request", "status": 400}) == 2
    assert exit_code_for_event({"event": "error", "code": "placement_failed", "status": 409}) == 1
    assert exit_code_for_event({"event": "error", "code": "launch_failed", "status": 500}) == 1
    assert exit_code_for_event({"event": "error", "code": "launch_cancelled"}) == 1
