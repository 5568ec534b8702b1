"""Metric definitions on a hand-made accuracy matrix."""

from __future__ import annotations

import pytest

from lifelong.engine import metrics as M

R = [
    [0.9, None, None],
    [0.6, 0.8, None],
    [0.5, 0.7, 0.95],
]


def test_average_accuracy() -> None:
    assert M.average_accuracy(R) == pytest.approx((0.5 + 0.7 + 0.95) / 3)


def test_forgetting_uses_the_best_earlier_row() -> None:
    f = M.forgetting(R)
    assert f[0] == pytest.approx(0.9 - 0.5) and f[1] == pytest.approx(0.8 - 0.7) and f[2] is None
    assert M.average_forgetting(R) == pytest.approx((0.4 + 0.1) / 2)


def test_forgetting_max_not_diagonal() -> None:
    R2 = [[0.5, None], [0.9, 0.8], [0.7, 0.6]]  # task 1 improved after task 2 (backward transfer)
    assert M.forgetting(R2)[0] == pytest.approx(0.9 - 0.7)


def test_bwt() -> None:
    assert M.backward_transfer(R) == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)


def test_partial_run_metrics() -> None:
    partial = [[0.9, None, None], [0.6, 0.8, None]]
    assert M.forgetting(partial) == [pytest.approx(0.3), None, None]
    assert M.average_accuracy(partial) == pytest.approx(0.7)


def test_average_incremental_includes_first_step() -> None:
    assert M.average_incremental_accuracy([1.0, 0.5, 0.3]) == pytest.approx(0.6)
