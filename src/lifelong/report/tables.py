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


_VARIANT_LABELS = {"nme": "nearest-mean-of-exemplars", "cnn": "network (CNN) head",
                   "before_correction": "before bias correction"}


def summary_line(metrics: dict[str, Any]) -> str:
    """The run's headline figures, each named. Class setting: final accuracy over every class seen (the
    papers' "last accuracy") and average incremental accuracy first; the unweighted mean of the last
    row (a 50-class base step weighing as much as a 2-class step) comes after them."""
    pct = lambda v: f"{v * 100:.2f}%"  # noqa: E731
    if metrics["setting"] == "class":
        parts = [f"final accuracy {pct(metrics['final_accuracy'])}" if metrics.get("final_accuracy") is not None else None,
                 f"average incremental accuracy {pct(metrics['average_incremental_accuracy'])}",
                 f"mean of last row {pct(metrics['average_accuracy'])}"]
    else:
        parts = [f"average accuracy {pct(metrics['average_accuracy'])}"]
    parts = [p for p in parts if p]
    if metrics.get("average_forgetting") is not None:
        parts.append(f"average forgetting {pct(metrics['average_forgetting'])}")
    if metrics.get("average_incremental_top5") is not None:
        parts.append(f"average incremental top-5 {pct(metrics['average_incremental_top5'])}")
    for name, v in (metrics.get("variants") or {}).items():
        label = _VARIANT_LABELS.get(name, name)
        if metrics["setting"] == "class":
            final = v["seen_accuracy"][-1] if v.get("seen_accuracy") else None
            parts.append(f"{label}: final {pct(final)}, average incremental {pct(v['average_incremental_accuracy'])}"
                         if final is not None else f"{label}: average incremental {pct(v['average_incremental_accuracy'])}")
        else:
            parts.append(f"{label}: average accuracy {pct(v['average_accuracy'])}")
    fp = metrics.get("footprint") or {}
    if fp:
        parts.append(f"size {fp['bytes'] / 2**20:.2f} MB")
    if metrics.get("memory", {}).get("size") is not None:
        parts.append(f"memory {metrics['memory']['size']} exemplars")
    if "unforgetting_verified" in metrics:
        parts.append(f"unforgetting verified: {metrics['unforgetting_verified']}")
    parts.append(f"time {sum(metrics.get('time_s') or []):.1f}s")
    return "; ".join(parts)


def layout_table(scenario: Any) -> str:
    """The task/class layout of a scenario (``lifelong run --dry-run``): per task its classes and how many
    images each split holds."""
    rows = [(str(t.id + 1), t.name, str(t.num_classes), _names(t.class_names), str(len(t.train)), str(len(t.val)),
             str(len(t.test))) for t in scenario.tasks]
    header = ("task", "name", "classes", "class names", "train", "val", "test")
    total = ("all", "", str(scenario.num_classes), "", str(sum(len(t.train) for t in scenario.tasks)),
             str(sum(len(t.val) for t in scenario.tasks)), str(sum(len(t.test) for t in scenario.tasks)))
    widths = [max(len(r[i]) for r in [header, *rows, total]) for i in range(len(header))]
    line = lambda r: "  ".join(v.ljust(w) if i in (1, 3) else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    size = "x".join(str(s) for s in (scenario.in_channels, scenario.augment.size, scenario.augment.size))
    return "\n".join([f"{scenario.name}, {scenario.setting}-incremental: {len(scenario.tasks)} tasks, "
                      f"{scenario.num_classes} classes, network input {size}", line(header)]
                     + [line(r) for r in rows] + [line(total)])


def _names(names: list[str], limit: int = 48) -> str:
    text = ", ".join(names)
    return text if len(text) <= limit else text[: limit - 3] + "..."
