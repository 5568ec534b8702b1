"""One training stage under the LASEM protocol, with the loop's hooks: for the table's other baselines.

``lasem_common.fit_lasem_phase`` trains a task in one phase. CCGN needs a gradient mask (frozen
kernels), DEN trains a task in several stages with proximal steps after each update, and the
brute-force oracle trains every configuration from the same start. ``fit_stage`` is the same
protocol (TF1 RMSProp, lr = lr0 / (1 + d * e) with e the stream-wide epoch count kept in
``method.global_epoch``, no augmentation, a fixed number of epochs) plus:

- ``after_backward`` / ``after_step``: the loop's hooks;
- ``epochs``: this stage's length (default: the config's);
- ``tracker``: a ``PeakTracker`` shared by all stages of a task, so the task has one peak
  (its epochs are numbered 1, 2, ... across the stages);
- ``count_epochs``: whether this stage's epochs advance the lr-decay count;
- ``after_epoch(epoch)``: called after each epoch, once the count (and the lr) has moved.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..data.scenario import Task
from ..engine.loop import Batch, EpochStats, Phase, StepOutput, TrainContext
from .lasem_common import LasemHParams, PeakTracker, lasem_lr


def fit_stage(method: torch.nn.Module, ctx: TrainContext, task: Task, params: list[torch.nn.Parameter],
              loss: Callable[[Batch], StepOutput], predict: Callable[[torch.Tensor], torch.Tensor], cfg: LasemHParams,
              *, epochs: int | None = None, tracker: PeakTracker | None = None, name: str = "train",
              after_backward: Callable[[], None] | None = None, after_step: Callable[[], None] | None = None,
              count_epochs: bool = True, after_epoch: Callable[[int], None] | None = None) -> list[EpochStats]:
    group: dict[str, Any] = {"params": list(params), "lr": lasem_lr(cfg, int(method.global_epoch))}

    def on_epoch_end(epoch: int, stats: EpochStats) -> None:
        if count_epochs:
            method.global_epoch += 1
            group["lr"] = lasem_lr(cfg, int(method.global_epoch))
        if after_epoch is not None:
            after_epoch(epoch)
        if tracker is not None and cfg.track_peak:
            method.eval()  # dropout off; the loop puts the method back in train mode next epoch
            tracker.update(len(tracker.val_history) + 1, ctx.accuracy(predict, task.val, task.mean, task.std),
                           ctx.accuracy(predict, task.test, task.mean, task.std))

    return ctx.fit(Phase(name, task.train, [group], epochs or cfg.epochs, cfg.optim(), loss, cfg.batch_size,
                         after_backward=after_backward, after_step=after_step, on_epoch_end=on_epoch_end,
                         modules=[method], augment=False))


def stage_info(method: torch.nn.Module, tracker: PeakTracker, cfg: LasemHParams) -> dict[str, Any]:
    """What ``fit_lasem_phase`` records: the stream-wide epoch count and the task's peak."""
    out: dict[str, Any] = {"global_epochs": int(method.global_epoch)}
    if cfg.track_peak:
        out["peak"] = tracker.summary()
    return out
