"""Run-folder figures: the accuracy-matrix heat map (``accuracy.png``) and, for methods with
aggregation weights (AANets), their value per level and epoch (``alphas.png``). The ``*_figure``
functions return the matplotlib figure, for ``lifelong report`` to inline."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..engine.checkpoint import atomic_write_bytes


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def figure_bytes(fig: Any, fmt: str = "png", dpi: int = 110) -> bytes:
    """The figure saved as ``fmt`` (png, svg, pdf), then closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi)
    pyplot().close(fig)
    return buf.getvalue()


def accuracy_heatmap(R: list[list[float | None]], names: list[str], path: Path, title: str) -> None:
    data = figure_bytes(accuracy_heatmap_figure(R, names, title))
    atomic_write_bytes(path, lambda f: f.write(data))


def accuracy_heatmap_figure(R: list[list[float | None]], names: list[str], title: str) -> Any:
    plt = pyplot()
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
    return fig


def alpha_curves(history: list[list[list[float]]], path: Path, title: str) -> bool:
    """One line per level over all epochs of all tasks (``history[task][epoch][level]``), a dashed line
    where each task starts. Writes nothing and returns False when no task recorded alphas."""
    fig = alpha_curves_figure(history, title)
    if fig is None:
        return False
    data = figure_bytes(fig)
    atomic_write_bytes(path, lambda f: f.write(data))
    return True


def alpha_curves_figure(history: list[list[list[float]]], title: str) -> Any:
    """``alpha_curves``'s figure, or None when no task recorded alphas."""
    points = [(t, a) for t, epochs in enumerate(history) for a in epochs]
    if not points:
        return None
    plt = pyplot()
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
    return fig
