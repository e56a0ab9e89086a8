"""Contract: etc/xinfd.toml loads, documents every setting and variable, and shows the real defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from xinfd import config
from xinfd.config import ENV_VARS, load_settings
from xinfd.types import GpuInfo

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "etc" / "xinfd.toml"
SPEC = REPO.parent / "shared" / "spec" / "environment-variables.txt"
FIELDS = list(config.DECLARATIONS)


@pytest.fixture(autouse=True)
def _no_system_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "xinfd.toml")


def test_reference_config_loads() -> None:
    load_settings(config_path=REFERENCE, env={}, strict=True)


def test_settings_table_is_generated_from_the_declarations() -> None:
    # Regenerate with `xinfd --settings-table > docs/settings.md`.
    assert (REPO / "docs" / "settings.md").read_text(encoding="utf-8") == config.settings_table()


def test_reference_config_is_generated_from_the_declarations() -> None:
    # The file is derived, never kept beside the declarations: regenerate it with `xinfd --print-reference`.
    assert REFERENCE.read_text(encoding="utf-8") == config.reference_toml()


@pytest.mark.parametrize("name", FIELDS)
def test_every_setting_is_documented(name: str) -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    pattern = r"^# \[\[gpus\]\]$" if name == "gpus" else rf"^(# )?{name} = "
    assert re.search(pattern, text, re.MULTILINE), f"{name} is not a key in {REFERENCE}"


@pytest.mark.parametrize("var", sorted(ENV_VARS))
def test_every_env_var_is_documented(var: str) -> None:
    assert re.search(rf"\b{var}\b", REFERENCE.read_text(encoding="utf-8")), f"{var} not in {REFERENCE}"


def test_every_spec_variable_is_supported() -> None:
    if not SPEC.is_file():
        pytest.skip(f"{SPEC} not present")
    names = re.findall(r"^(XINFERENCE_[A-Z_]+)#?$", SPEC.read_text(encoding="utf-8"), re.MULTILINE)
    assert names, "no variables found in the spec"
    assert sorted(set(names) - set(ENV_VARS)) == []


def test_documented_values_are_the_defaults(tmp_path: Path) -> None:
    # Uncomment every "# key = value" line (and the [[gpus]] example): the file must still load, and every
    # value it shows must be the real default, except examples shown for settings unset by default.
    text = REFERENCE.read_text(encoding="utf-8")
    uncommented = re.sub(r"^# (\[\[gpus\]\]|[a-z_]+ = .*)$", r"\1", text, flags=re.MULTILINE)
    path = tmp_path / "xinfd.toml"
    path.write_text(uncommented, encoding="utf-8")
    loaded = load_settings(config_path=path, env={})
    defaults = load_settings(env={})
    examples = {"daemon_name", "max_tokens", "csg_token", "text_to_image_batching_size", "gpus", "control_socket_group"}
    for name in FIELDS:
        assert loaded.sources[name] == f"file {path}", f"{name} is not shown as '# {name} = ...'"
        if name not in examples:
            assert getattr(loaded, name) == getattr(defaults, name), f"{name}: documented default is wrong"
    assert loaded.gpus[0] == GpuInfo(index=0, name="NVIDIA A100-SXM4-80GB", memory_mb=81920)
