"""The row-wise top-p warper (``transformers_sampling``): transformers' own arithmetic for rows with top_p < 1,
untouched rows (and no sort) for top_p = 1."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers.generation.continuous_batching.cb_logits_processors import (  # noqa: E402  (after importorskip)
    ContinuousBatchingTopPLogitsWarper,
)
from transformers.generation.logits_process import TopPLogitsWarper  # noqa: E402
from xinfd_engines.transformers_sampling import _rowwise_top_p_class, skip_noop_top_p  # noqa: E402


def warpers() -> tuple[Any, Any]:
    reference = ContinuousBatchingTopPLogitsWarper(TopPLogitsWarper(top_p=0.9))
    rowwise = ContinuousBatchingTopPLogitsWarper(TopPLogitsWarper(top_p=0.9))
    rowwise.__class__ = _rowwise_top_p_class()
    return reference, rowwise


def tensor_arg(*top_ps: float) -> Any:
    return torch.tensor(top_ps, dtype=torch.float32).view(dtype=torch.int32)


def test_rows_asking_for_top_p_get_transformers_result_and_the_others_are_untouched() -> None:
    reference, rowwise = warpers()
    torch.manual_seed(0)
    scores = torch.randn(4, 1000)
    args = tensor_arg(0.5, 1.0, 0.9, 1.0)
    expected = reference(scores, args)
    got = rowwise(scores, args)
    assert torch.equal(got[[0, 2]], expected[[0, 2]])
    assert torch.equal(got[[1, 3]], scores[[1, 3]])
    assert torch.equal(expected[[1, 3]], scores[[1, 3]])  # transformers' sort changed nothing there either
    every = tensor_arg(0.3, 0.3, 0.3, 0.3)
    assert torch.equal(rowwise(scores, every), reference(scores, every))


def test_no_row_asking_means_no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    _, rowwise = warpers()
    scores = torch.randn(3, 500)

    def no_sort(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("sorted although every row has top_p=1")

    monkeypatch.setattr(torch, "sort", no_sort)
    assert rowwise(scores, tensor_arg(1.0, 1.0, 1.0)) is scores


def test_the_manager_s_warpers_are_swapped_once() -> None:
    from types import SimpleNamespace

    processors = [ContinuousBatchingTopPLogitsWarper(TopPLogitsWarper(top_p=0.95)), object()]
    manager = SimpleNamespace(logit_processor=SimpleNamespace(logits_processor=processors))
    assert skip_noop_top_p(manager) == 1
    assert isinstance(processors[0], _rowwise_top_p_class())
    assert skip_noop_top_p(manager) == 0
