"""TensorBoard logging (``lifelong run --log tensorboard``), an optional extra: ``pip install 'lifelong[tensorboard]'``.

Event files go into the run folder itself (``tensorboard --logdir runs/`` shows every run). Scalars:

- per epoch, at step = the epoch's row number in ``log.csv`` (counted over the whole stream, so a
  resumed run continues the curve): ``epoch/loss/<phase>``, ``epoch/accuracy/<phase>`` (train
  accuracy, when the phase reports one), ``epoch/lr/<phase>``, ``epoch/samples_per_s/<phase>``,
  ``epoch/task`` (which task the epoch belongs to);
- per task, at step = the number of tasks learned: ``task/accuracy/<j>`` (R[i][j] for every task
  seen), ``task/seen_accuracy``, ``task/average_accuracy``, ``task/average_forgetting``, ``task/bwt``,
  ``task/footprint_bytes``, ``task/memory``, ``task/seconds``.

Nothing here is imported unless the logger is asked for: a run without ``--log`` calls no code of
this module (the epoch callback stays ``list.append``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError


def require_tensorboard() -> None:
    """A ``ConfigError`` naming the extra to install when the ``tensorboard`` package is absent."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError("--log tensorboard needs the tensorboard package: pip install 'lifelong[tensorboard]' "
                          "(or pip install tensorboard)") from None


class TensorBoardLog:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._writer: Any = None

    def _w(self) -> Any:
        if self._writer is None:  # opened on first use: nothing is written before the run folder exists
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir))
        return self._writer

    def epoch(self, step: int, row: dict[str, Any]) -> None:
        w = self._w()
        phase = str(row.get("phase", "train"))
        for key in ("loss", "accuracy", "lr", "samples_per_s"):
            value = row.get(key)
            if value is not None:
                w.add_scalar(f"epoch/{key}/{phase}", float(value), step)
        w.add_scalar("epoch/task", float(row["task"]), step)

    def task(self, step: int, metrics: dict[str, Any]) -> None:
        w = self._w()
        row = metrics["accuracy"][step - 1]
        for j, value in enumerate(row):
            if value is not None:
                w.add_scalar(f"task/accuracy/{j + 1}", float(value), step)
        scalars = {
            "seen_accuracy": (metrics.get("seen_accuracy") or [None] * step)[step - 1],
            "average_accuracy": metrics.get("average_accuracy"),
            "average_forgetting": metrics.get("average_forgetting"),
            "bwt": metrics.get("bwt"),
            "footprint_bytes": (metrics.get("footprint") or {}).get("bytes"),
            "memory": (metrics.get("memory") or {}).get("size"),
            "seconds": (metrics.get("time_s") or [None] * step)[step - 1],
        }
        for key, value in scalars.items():
            if value is not None:
                w.add_scalar(f"task/{key}", float(value), step)
        w.flush()  # a finished task is on disk, as its checkpoint is

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
