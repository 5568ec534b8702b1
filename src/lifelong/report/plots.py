"""The accuracy-matrix heat map written to ``accuracy.png``."""

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
