"""Human output of xinfctl: the families table shared by `families` and `registrations`."""

from __future__ import annotations

from xinfd.cli.output import families_table


def test_families_table_lists_each_family_under_the_headers() -> None:
    rows = [
        {"model_name": "echo", "abilities": ["chat", "generate"], "engines": ["echo"], "context_length": 4096},
        {"model_name": "all-minilm-l6-v2", "abilities": ["embed"], "engines": ["sentence_transformers"],
         "context_length": 256},
    ]
    lines = families_table(rows).splitlines()
    assert lines[0].split() == ["MODEL", "ABILITIES", "ENGINES", "CONTEXT"]
    assert lines[1].split() == ["echo", "chat,generate", "echo", "4096"]
    assert lines[2].split() == ["all-minilm-l6-v2", "embed", "sentence_transformers", "256"]
