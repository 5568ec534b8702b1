"""Plain-text tables for the terminal: the accuracy matrix and the run summary."""

from __future__ import annotations

from typing import Any


def _pct(v: float | None) -> str:
    return "   -" if v is None else f"{v * 100:5.1f}"


def accuracy_table(metrics: dict[str, Any]) -> str:
    R = metrics["accuracy"]
    n = len(metrics["tasks"])
    lines = [f"{metrics['method']} on {metrics['benchmark']} ({metrics['setting']}-incremental, seed {metrics['seed']})",
             "accuracy (%) after training task i (rows) on task j (columns):",
             "      " + " ".join(f"{j + 1:>5}" for j in range(n))]
    for i, row in enumerate(R):
        lines.append(f"{i + 1:>5} " + " ".join(_pct(v) for v in row))
    if metrics.get("forgetting"):
        lines.append("forget " + " ".join(_pct(v) for v in metrics["forgetting"]))
    lines.append(summary_line(metrics))
    return "\n".join(lines)


def summary_line(metrics: dict[str, Any]) -> str:
    parts = [f"average accuracy {metrics['average_accuracy'] * 100:.2f}%",
             f"average incremental accuracy {metrics['average_incremental_accuracy'] * 100:.2f}%"]
    if metrics.get("average_forgetting") is not None:
        parts.append(f"average forgetting {metrics['average_forgetting'] * 100:.2f}%")
    if metrics.get("average_incremental_top5") is not None:
        parts.append(f"top-5 {metrics['average_incremental_top5'] * 100:.2f}%")
    for name, v in (metrics.get("variants") or {}).items():
        parts.append(f"{name} {v['average_incremental_accuracy'] * 100:.2f}%")
    fp = metrics.get("footprint") or {}
    if fp:
        parts.append(f"size {fp['bytes'] / 2**20:.2f} MB")
    if metrics.get("memory", {}).get("size") is not None:
        parts.append(f"memory {metrics['memory']['size']}")
    if "unforgetting_verified" in metrics:
        parts.append(f"unforgetting verified: {metrics['unforgetting_verified']}")
    parts.append(f"time {sum(metrics.get('time_s') or []):.1f}s")
    return "; ".join(parts)
