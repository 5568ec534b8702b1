"""Pruning pieces of CPG/PackNet (cpg.md 4.3, 4.6): schedule, layer-wise selection, ratio choice."""

from __future__ import annotations

import pytest
import torch

from lifelong.methods.pruning import (DEFAULT_RATIOS, choose_ratio, cubic_sparsity, magnitude_select, ratio_runs,
                                      reserved_ratio)


def test_cubic_schedule_values() -> None:
    # s(step) = s_f + (s_i - s_f)(1 - p)^3, p = clip((step - b)/(e - b), 0, 1)
    assert cubic_sparsity(0, 0.0, 0.8, 0, 100) == 0.0
    assert cubic_sparsity(50, 0.0, 0.8, 0, 100) == pytest.approx(0.8 - 0.8 * 0.125)  # 0.7
    assert cubic_sparsity(25, 0.2, 0.6, 0, 100) == pytest.approx(0.6 - 0.4 * 0.75**3)
    assert cubic_sparsity(100, 0.1, 0.2, 0, 100) == pytest.approx(0.2)
    assert cubic_sparsity(500, 0.1, 0.2, 0, 100) == pytest.approx(0.2)  # clipped after the end
    assert cubic_sparsity(-5, 0.1, 0.2, 0, 100) == pytest.approx(0.1)  # clipped before the start
    assert cubic_sparsity(3, 0.1, 0.2, 10, 10) == 0.2  # degenerate window: the final value
    values = [cubic_sparsity(s, 0.0, 0.9, 0, 40) for s in range(0, 41, 10)]
    assert values == sorted(values)  # monotone
    steps = [b - a for a, b in zip(values, values[1:])]
    assert steps == sorted(steps, reverse=True)  # fast first, slow at the end


def test_ratio_runs_chain_from_zero() -> None:
    runs = ratio_runs(DEFAULT_RATIOS)
    assert runs[0] == (0.0, 0.1) and runs[-1] == (0.9, 0.95) and len(runs) == 10
    assert all(a[1] == b[0] for a, b in zip(runs, runs[1:]))


def test_magnitude_select_is_layerwise_among_the_tasks_own_weights() -> None:
    w = torch.tensor([[0.1, -0.2, 0.3, -0.4], [0.5, -0.6, 0.7, 0.0]])
    owner = torch.tensor([[2, 2, 2, 2], [1, 1, 2, 0]], dtype=torch.uint8)
    # candidates: owner 2 (5 weights) + owner 0 (1, already pruned); k = round(0.5 * 6) = 3;
    # the 3 smallest |w| among candidates: 0.0 (free), 0.1, 0.2 -> newly pruned: the two owned ones
    sel = magnitude_select(w, owner, 2, 0.5)
    assert sel.tolist() == [[True, True, False, False], [False, False, False, False]]
    # owner 1's weights (0.5, -0.6) are never selected, however small
    w_small_old = w.clone()
    w_small_old[1, 0] = 1e-6
    assert not magnitude_select(w_small_old, owner, 2, 0.9)[1, :2].any()
    assert not magnitude_select(w, owner, 2, 0.0).any()


def test_magnitude_select_rounds_like_python() -> None:
    w = torch.arange(1, 11, dtype=torch.float32)
    owner = torch.full((10,), 3, dtype=torch.uint8)
    assert int(magnitude_select(w, owner, 3, 0.25).sum()) == 2  # round(2.5) == 2 (banker's rounding)
    assert int(magnitude_select(w, owner, 3, 0.35).sum()) == 4  # round(3.5) == 4
    assert magnitude_select(w, owner, 3, 0.3).tolist() == [True] * 3 + [False] * 7


def test_choose_ratio() -> None:
    record = {0.1: 0.90, 0.2: 0.91, 0.3: 0.88, 0.4: 0.895}
    assert choose_ratio(record, 0.895) == 0.4  # largest ratio meeting the goal, even after a dip
    assert choose_ratio(record, 0.905) == 0.2
    assert choose_ratio(record, 0.95) == 0.0  # nothing qualifies: the unpruned model
    assert choose_ratio(record, 0.95, allow_loss=0.06) == 0.4
    assert choose_ratio(record, 0.99, take_highest=True) == 0.4
    assert choose_ratio({}, 0.5) == 0.0


def test_reserved_capacity_rule_uses_python_rounding() -> None:
    assert reserved_ratio(0) == 0.0  # last task: no pruning
    assert reserved_ratio(1) == pytest.approx(0.5)
    assert reserved_ratio(3) == pytest.approx(0.8)  # round(0.25, 1) == 0.2 (pitfall 13)
    assert reserved_ratio(5) == pytest.approx(0.8)  # round(1/6, 1) == 0.2
    assert reserved_ratio(19) == pytest.approx(0.9)  # round(1/20, 1) == 0.1
