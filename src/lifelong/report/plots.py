"""Run-folder figures: the accuracy-matrix heat map (``accuracy.png``) and, for methods with
aggregation weights (AANets), their value per level and epoch (``alphas.png``)."""

from __future__ import annotations

import io
from pathlib import Path

from ..engine.checkpoint import atomic_write_bytes


def accuracy_heatmap(R: list[list[float | None]], names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.array([[np.nan if v is None else v for v in row] for row in R], dtype=float)
    n_rows, n_cols = data.shape if data.size else (0, len(names))
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * max(n_cols, 2), 1.0 + 0.5 * max(n_rows, 2)))
    im = ax.imshow(data * 100, vmin=0, vmax=100, cmap="viridis")
    if n_cols <= 25:
        for i in range(n_rows):
            for j in range(n_cols):
                if not np.isnan(data[i, j]):
                    ax.text(j, i, f"{data[i, j] * 100:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if data[i, j] < 0.6 else "black")
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task i")
    ax.set_xticks(range(n_cols), [str(j + 1) for j in range(n_cols)])
    ax.set_yticks(range(n_rows), [str(i + 1) for i in range(n_rows)])
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))


def alpha_curves(history: list[list[list[float]]], path: Path, title: str) -> bool:
    """One line per level over all epochs of all tasks (``history[task][epoch][level]``), a dashed line
    where each task starts. Writes nothing and returns False when no task recorded alphas."""
    points = [(t, a) for t, epochs in enumerate(history) for a in epochs]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    levels = len(points[0][1])
    for k in range(levels):
        ax.plot(range(1, len(points) + 1), [a[k] for _, a in points], label=f"level {k + 1}", lw=1.2)
    start = 0
    for t, epochs in enumerate(history):
        if epochs:
            ax.axvline(start + 0.5, color="grey", ls="--", lw=0.6)
            ax.text(start + 1, ax.get_ylim()[1], f"task {t + 1}", fontsize=6, va="top", color="grey")
        start += len(epochs)
    ax.set_xlabel("epoch (tasks with two branches, in order)")
    ax.set_ylabel("alpha (weight of the stable block)")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))
    return True
