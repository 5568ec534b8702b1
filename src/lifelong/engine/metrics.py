"""Metric definitions used everywhere (DESIGN "Metrics"), computed from the accuracy matrix.

``R[i][j]``: accuracy on task j after training task i (``None`` for j > i).
"""

from __future__ import annotations

from statistics import mean
from typing import Optional

Matrix = list[list[Optional[float]]]


def average_accuracy(R: Matrix) -> float:
    """Mean of the last row: accuracy on every task after the last one."""
    last = [v for v in R[-1] if v is not None]
    return mean(last)


def forgetting(R: Matrix) -> list[Optional[float]]:
    """Per task j < T: max over earlier rows i (j <= i < T) of R[i][j] minus R[T][j]; None for the last task."""
    T = len(R)
    out: list[Optional[float]] = []
    for j in range(len(R[-1])):
        if j >= T - 1:
            out.append(None)
            continue
        best = max(R[i][j] for i in range(j, T - 1))  # type: ignore[type-var]
        out.append(best - R[-1][j])  # type: ignore[operator]
    return out


def average_forgetting(R: Matrix) -> Optional[float]:
    vals = [v for v in forgetting(R) if v is not None]
    return mean(vals) if vals else None


def backward_transfer(R: Matrix) -> Optional[float]:
    """BWT (Lopez-Paz & Ranzato 2017): mean over j < T of R[T][j] - R[j][j]."""
    T = len(R)
    vals = [R[-1][j] - R[j][j] for j in range(T - 1)]  # type: ignore[operator]
    return mean(vals) if vals else None


def average_incremental_accuracy(seen_accuracy: list[float]) -> float:
    """Mean over steps of the accuracy on all classes seen so far, first step included (iCaRL/LUCIR)."""
    return mean(seen_accuracy)


def summarise(R: Matrix, seen_accuracy: list[float]) -> dict:
    return {
        "average_accuracy": average_accuracy(R),
        "average_incremental_accuracy": average_incremental_accuracy(seen_accuracy),
        "forgetting": forgetting(R),
        "average_forgetting": average_forgetting(R),
        "bwt": backward_transfer(R),
    }
