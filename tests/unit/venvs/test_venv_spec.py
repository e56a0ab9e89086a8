"""Package-list semantics of model venvs (spec "Model Virtual Environments"), without uv."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from xinfd.venvs.builder import parse_pins, split_satisfied
from xinfd.venvs.pipconfig import from_environment, parse_config_list, to_options
from xinfd.venvs.spec import (
    IndexOptions,
    VenvSpec,
    VenvSpecError,
    check_name,
    check_package,
    check_requested_packages,
    expand_packages,
    index_options,
)

ENGINES = ["transformers", "vllm", "llama.cpp", "sentence-transformers"]
DEPS = {
    "transformers": ["transformers>=4.40", "accelerate"],
    "vllm": ["vllm==0.8.0", "numpy<2 ; python_version < '3.9'"],
    "llama.cpp": ["llama-cpp-python"],
    "sentence-transformers": ["sentence-transformers"],
}
SYSTEM = {"numpy": "1.26.4", "torch": "2.13.0"}
LINUX = {"sys_platform": "linux", "platform_machine": "x86_64", "python_version": "3.11",
         "python_full_version": "3.11.7", "os_name": "posix", "platform_system": "Linux",
         "implementation_name": "cpython", "platform_python_implementation": "CPython",
         "implementation_version": "3.11.7", "platform_version": "", "platform_release": ""}


def expand(packages: Sequence[str], engine: str = "vllm", overrides: Sequence[str] = ()) -> list[str]:
    return list(expand_packages(packages, engine=engine, engines=ENGINES, dependencies=lambda e: DEPS[e],
                                system_version=SYSTEM.get, environment=LINUX, overrides=overrides))


SPEC_BLOCK = [
    '#transformers_dependencies# ; #engine# == "transformers"',
    '#vllm_dependencies# ; #engine# == "vllm"',
    '#llama_cpp_dependencies# ; #engine# == "llama.cpp"',
    '#sentence_transformers_dependencies# ; #model_engine# == "sentence-transformers"',
    '#system_numpy# ; #engine# == "vllm"',
]


def test_the_spec_example_block_selects_the_engine_s_entries() -> None:
    assert expand(SPEC_BLOCK, "vllm") == ["vllm==0.8.0", "numpy==1.26.4"]
    assert expand(SPEC_BLOCK, "transformers") == ["transformers>=4.40", "accelerate"]
    assert expand(SPEC_BLOCK, "llama.cpp") == ["llama-cpp-python"]
    assert expand(SPEC_BLOCK, "sentence-transformers") == ["sentence-transformers"]


def test_engine_markers_are_case_sensitive_and_combine_with_pep508_markers() -> None:
    assert expand(['a==1 ; #engine# == "VLLM"']) == []
    assert expand(['a==1 ; #engine# == "vllm" and sys_platform == "linux"']) == ["a==1"]
    assert expand(['a==1 ; #engine# == "vllm" and sys_platform == "win32"']) == []
    assert expand(['a==1 ; #engine# != "vllm" or platform_machine == "x86_64"']) == ["a==1"]
    assert expand(["a==1 ; python_version >= '3.12'"]) == []


def test_unknown_placeholder_is_an_error_naming_it() -> None:
    with pytest.raises(VenvSpecError, match="#nosuch_dependencies#"):
        expand(["#nosuch_dependencies#"])


def test_system_pin_needs_the_package_in_xinfd_s_environment() -> None:
    assert expand(["#system_torch#"]) == ["torch==2.13.0"]
    with pytest.raises(VenvSpecError, match="notinstalled"):
        expand(["#system_notinstalled#"])


def test_override_replaces_same_normalised_name_else_appends() -> None:
    block = ["Transformers==4.37.2", "accelerate", "#system_numpy#", "sentencepiece"]
    result = expand(block, overrides=["transformers==4.46.3", "NumPy==2.0", "extra-pkg>=1"])
    assert result == ["transformers==4.46.3", "accelerate", "NumPy==2.0", "sentencepiece", "extra-pkg>=1"]
    # an override also replaces entries coming from an engine placeholder
    assert expand(["#vllm_dependencies#"], overrides=["vllm==0.9.1"]) == ["vllm==0.9.1"]


@pytest.mark.parametrize("bad", ["--index-url http://x", "-e /etc", "-r /etc/passwd", "pkg==1\n--pre",
                                 "not a requirement !!", ""])
def test_option_like_or_invalid_entries_are_rejected(bad: str) -> None:
    with pytest.raises(VenvSpecError):
        check_package(bad)


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", ".hidden", "a..b", ""])
def test_names_that_could_escape_the_venv_root_are_rejected(bad: str) -> None:
    with pytest.raises(VenvSpecError):
        check_name(bad, "model name")


def test_index_options_are_validated_and_become_argv_items() -> None:
    options = index_options({"packages": [], "index_url": "https://mirror/simple",
                             "extra_index_url": ["https://a/simple", "https://b/simple"],
                             "find_links": "/opt/wheels", "trusted_host": "mirror",
                             "index_strategy": "unsafe-best-match", "no_build_isolation": True})
    assert options.uv_args() == [
        "--index-url", "https://mirror/simple", "--extra-index-url", "https://a/simple",
        "--extra-index-url", "https://b/simple", "--find-links", "/opt/wheels",
        "--allow-insecure-host", "mirror",
        "--index-strategy", "unsafe-best-match", "--no-build-isolation"]
    # The same options for pip (source builds): pip's names, no uv-only strategy, constraints as files.
    with_constraints = dataclasses.replace(options, constraints=("/etc/pip/c.txt",))
    assert with_constraints.pip_args() == [
        "--index-url", "https://mirror/simple", "--extra-index-url", "https://a/simple",
        "--extra-index-url", "https://b/simple", "--find-links", "/opt/wheels", "--trusted-host", "mirror",
        "--no-build-isolation", "--constraint", "/etc/pip/c.txt"]
    for bad in ({"index_url": "--x"}, {"find_links": "a b"}, {"nope": 1}, {"index_strategy": "fastest"}):
        with pytest.raises(VenvSpecError):
            index_options(bad)


def test_digest_changes_with_anything_that_changes_the_venv() -> None:
    base = VenvSpec(model_name="m", engine="e", python_version="3.11.7", python="/p", requirements=("a==1",))
    same = VenvSpec(model_name="m", engine="e", python_version="3.11.7", python="/p", requirements=("a==1",))
    assert base.digest() == same.digest()
    changed = [
        VenvSpec(model_name="m", engine="e", python_version="3.11.7", python="/p", requirements=("a==2",)),
        VenvSpec(model_name="m", engine="e", python_version="3.11.7", python="/p", requirements=("a==1",),
                 skip_installed=False),
        VenvSpec(model_name="m", engine="e", python_version="3.11.7", python="/p", requirements=("a==1",),
                 index=IndexOptions(index_url="https://x")),
    ]
    assert len({base.digest(), *(c.digest() for c in changed)}) == 4


def test_pip_config_precedence_env_over_install_over_global() -> None:
    text = "\n".join([
        "global.index-url='https://global/simple'",
        "install.index-url='https://install/simple'",
        "global.extra-index-url='file:///opt/pypi/simple file:///opt/more/simple'",
        "global.constraint='/etc/xdg/pip/constraints.txt'",
        ":env:.find-links='/opt/wheels'",
        "global.cert='/etc/ssl/certs/ca.crt'",
    ])
    values = parse_config_list(text)
    assert values["index-url"] == "https://install/simple"
    options = to_options(values)
    assert options.extra_index_urls == ("file:///opt/pypi/simple", "file:///opt/more/simple")
    assert options.find_links == ("/opt/wheels",) and options.constraints == ("/etc/xdg/pip/constraints.txt",)
    assert from_environment({"PIP_FIND_LINKS": "/w", "PIP_TRUSTED_HOST": "h"}) == {"find-links": "/w",
                                                                                   "trusted-host": "h"}
    # the model's own block wins over pip's, lists keep both
    merged = IndexOptions(index_url="https://model/simple", find_links=("/m",)).merged(options)
    assert merged.index_url == "https://model/simple" and merged.find_links == ("/m", "/opt/wheels")


def test_skip_installed_helpers() -> None:
    todo, satisfied = split_satisfied(["numpy==1.26.4", "torch>=2", "requests[socks]", "new==1"],
                                      {"numpy": "1.26.4", "torch": "2.13.0", "requests": "2.0"})
    assert todo == ["requests[socks]", "new==1"] and satisfied == ["numpy", "torch"]
    assert parse_pins("# c\nFoo_Bar==1.0\npkg @ https://x/pkg.whl\n") == {"foo-bar": "1.0",
                                                                       "pkg": "pkg @ https://x/pkg.whl"}


@pytest.mark.parametrize("override", ["foo==", "--index-url=x", "foo ; python_version >>", "#nosuch_dependencies#",
                                      "#system_nosuch#", ""])
def test_a_bad_override_names_the_request_field_a_bad_family_entry_names_none(override: str) -> None:
    with pytest.raises(VenvSpecError) as bad_override:
        expand_packages(["accelerate"], engine="vllm", engines=ENGINES, dependencies=lambda e: DEPS[e],
                        system_version=SYSTEM.get, environment=LINUX, overrides=[override],
                        overrides_param="virtual_env_packages")
    assert bad_override.value.param == "virtual_env_packages"
    with pytest.raises(VenvSpecError) as bad_family:
        expand([override])
    assert bad_family.value.param is None  # the family's own block: no request field to blame


def test_requested_direct_references_are_refused_unless_allowed() -> None:
    with pytest.raises(VenvSpecError, match="allow_direct_references") as refused:
        check_requested_packages(["evil @ file:///tmp/evil"], allow_direct_references=False)
    assert refused.value.param == "virtual_env_packages"
    check_requested_packages(["evil @ file:///tmp/evil", "foo>=1"], allow_direct_references=True)
    with pytest.raises(VenvSpecError) as malformed:
        check_requested_packages(["foo=="], allow_direct_references=True)
    assert malformed.value.param == "virtual_env_packages"
