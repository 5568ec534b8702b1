"""What every LASEM-family method shares: the code's training protocol, peak accuracy, the configuration tables.

Training (lasem.md 6): TF1 RMSProp (``rmsprop_tf``), lr = lr0 / (1 + d * e) where e counts epochs
over the *whole* stream (a buffer, so a resumed run continues the count), no weight decay, no
augmentation, a fixed number of epochs per task, a fresh optimiser (ms = 1) per task.

Peak accuracy (lasem.md 7, ``best_test_error_each_task``): after every epoch of task t the
current task's validation and test accuracy are measured; the peak is the test accuracy at the
first epoch with the highest validation accuracy, inside t's own phase. The weights are *not*
restored to that epoch (the code keeps the last-epoch weights), so the runner's accuracy matrix
gives the final accuracy and ``info["peak"]`` the peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from ..data.scenario import Task
from ..engine.loop import Batch, EpochStats, Phase, StepOutput, TrainContext
from ..errors import ConfigError
from .base import TrainHParams

# The embedded toy benchmarks give 10 (digits) or 5 (permuted-digits) epochs per task. With the
# accumulator starting at 1, TF1 RMSProp moves little until ms has decayed (~30 steps), so the toy
# budget keeps the code's batch of 10 (more steps per epoch than the toy batch 32) with lr 1e-3 and
# no decay. Recorded in config.yaml like every default.
TOY_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"batch_size": 10, "lr": 1e-3, "lr_decay": 0.0},
    "permuted-digits": {"batch_size": 10, "lr": 1e-3, "lr_decay": 0.0},
}


@dataclass
class LasemHParams(TrainHParams):
    """The LASEM code's training settings; defaults are its CIFAR-100 column (lasem.md 6)."""

    epochs: int = 2000  # lasem.md 6: CIFAR-100 patience (Office-Home 1000, STL-10 500); every task trains exactly this many
    batch_size: int = 10  # lasem.md 6 (Office-Home 16)
    optimizer: str = "rmsprop_tf"  # lasem.md 6: TF1 RMSProp, rho 0.9, eps 1e-10 inside the sqrt, ms starts at 1
    lr: float = 1e-4  # lasem.md 6 (Office-Home 2e-5)
    lr_decay: float = 2.5e-4  # lasem.md 6: lr = lr0/(1+d*global epoch), CIFAR-100 1/4000 (Office-Home 1e-4, STL-10 0)
    momentum: float = 0.0  # lasem.md 6: RMSProp without momentum
    nesterov: bool = False
    weight_decay: float = 0.0  # lasem.md 6: no weight decay anywhere
    schedule: str = "none"  # the decay above is the only schedule
    milestones: list[int] = field(default_factory=list)
    track_peak: bool = True  # lasem.md 7: per-epoch val/test of the current task for the peak accuracy

    def validate(self) -> None:
        super().validate()
        if self.lr_decay < 0:
            raise ConfigError(f"lr_decay must be >= 0, got {self.lr_decay}")


def lasem_lr(cfg: LasemHParams, global_epoch: int) -> float:
    return cfg.lr / (1.0 + cfg.lr_decay * global_epoch)


class PeakTracker:
    """First epoch with the highest validation accuracy (strict improvement) and the test accuracy then."""

    def __init__(self) -> None:
        self.best_val = -math.inf
        self.epoch: int | None = None
        self.test: float | None = None
        self.val_history: list[float] = []
        self.test_history: list[float] = []

    def update(self, epoch: int, val: float, test: float) -> None:
        self.val_history.append(round(val, 6))
        self.test_history.append(round(test, 6))
        if not math.isnan(val) and val > self.best_val:
            self.best_val, self.epoch, self.test = val, epoch, test

    def summary(self) -> dict[str, Any]:
        if self.epoch is None and self.test_history:  # no validation data: the last epoch
            self.epoch, self.test = len(self.test_history), self.test_history[-1]
        return {"epoch": self.epoch, "val_accuracy": None if self.epoch is None or self.best_val == -math.inf else self.best_val,
                "test_accuracy": self.test, "val_history": self.val_history, "test_history": self.test_history}


def fit_lasem_phase(method: torch.nn.Module, ctx: TrainContext, task: Task, params: list[torch.nn.Parameter],
                    loss: Callable[[Batch], StepOutput], predict: Callable[[torch.Tensor], torch.Tensor],
                    cfg: LasemHParams, after_epoch: Callable[[int], None] | None = None,
                    interleave: Phase | None = None, grad_only_params: bool = False) -> dict[str, Any]:
    """One task through the shared loop with the code's protocol; returns ``{"peak": ..., "global_epochs": n}``.

    ``method.global_epoch`` (a buffer) is the stream-wide epoch count of the lr decay; the
    optimiser's one param group is handed in as a dict so the per-epoch decay can set its lr.

    ``interleave`` (DARTS's architecture step): a phase run for one epoch after each epoch of this
    one (the loop's ``Phase.interleave``); its dict param groups get the lr the epoch just trained
    with (the code's two RMSProp trainers share lr and decay), and ``after_epoch`` and the peak
    evaluation move to its epoch end, so they see both updates of the epoch."""
    group: dict[str, Any] = {"params": list(params), "lr": lasem_lr(cfg, int(method.global_epoch))}
    tracker = PeakTracker()
    sub_groups = [g for g in (interleave.params if interleave is not None else []) if isinstance(g, dict)]
    for g in sub_groups:
        g["lr"] = group["lr"]

    def evaluate(epoch: int) -> None:
        if after_epoch is not None:
            after_epoch(epoch)
        if cfg.track_peak:
            method.eval()  # dropout off; the loop puts the method back in train mode next epoch
            tracker.update(epoch, ctx.accuracy(predict, task.val, task.mean, task.std),
                           ctx.accuracy(predict, task.test, task.mean, task.std))

    def on_epoch_end(epoch: int, stats: EpochStats) -> None:
        for g in sub_groups:
            g["lr"] = group["lr"]  # the interleaved epoch uses the lr this epoch trained with
        method.global_epoch += 1
        group["lr"] = lasem_lr(cfg, int(method.global_epoch))
        if interleave is None:
            evaluate(epoch)

    sub = None if interleave is None else replace(interleave, on_epoch_end=lambda epoch, stats: evaluate(epoch))
    ctx.fit(Phase("train", task.train, [group], cfg.epochs, cfg.optim(), loss, cfg.batch_size,
                  on_epoch_end=on_epoch_end, modules=[method], augment=False, interleave=sub,
                  grad_only_params=grad_only_params))
    out: dict[str, Any] = {"global_epochs": int(method.global_epoch)}
    if cfg.track_peak:
        out["peak"] = tracker.summary()
    return out


# ------------------------------------------------------------------ configuration tables (lasem.md 3)
# ``test_type // 5`` indexes these bins (``utils_env_cl.py``, ``conv_sharing`` block).
BINS_4 = ("all", "top1", "top2", "top3", "bottom1", "bottom2", "bottom3", "alter", "alter_rev")
BINS_6 = ("all", "top1", "top2", "top3", "top4", "top5", "bottom1", "bottom2", "bottom3", "bottom4", "bottom5", "alter")
# ``test_type % 5``: TF's auxiliary weight and DF-CNN's (KB, TS) L2 scales (``regularization_scale[1]``, ``[3]``).
TF_AUX_WEIGHTS = (0.1, 0.05, 0.01, 0.005, 0.001)
DF_REG_SCALES = ((1e-7, 1e-7), (1e-7, 1e-9), (1e-7, 1e-11), (1e-9, 1e-9), (1e-9, 1e-11))


def named_config(name: str, num_layers: int) -> str:
    """all, top<k>, bottom<k>, alter (bottom layer task-specific), alter_rev, for any layer count."""
    L, n = num_layers, name.lower()
    if n == "all":
        return "T" * L
    if n in ("alter", "alter_rev"):
        first, second = ("F", "T") if n == "alter" else ("T", "F")
        return "".join(first if i % 2 == 0 else second for i in range(L))
    for prefix in ("top", "bottom"):
        if n.startswith(prefix) and n[len(prefix):].isdigit():
            k = int(n[len(prefix):])
            if not 1 <= k <= L:
                raise ConfigError(f"transfer {name}: k must be 1..{L} for {L} conv layers")
            return "F" * (L - k) + "T" * k if prefix == "top" else "T" * k + "F" * (L - k)
    raise ConfigError(f"transfer {name!r} is not all, top<k>, bottom<k>, alter, alter_rev or a T/F string of {L} letters")


def resolve_transfer(transfer: str, num_layers: int, variant: str) -> str:
    """A configuration string, bottom layer first. On Office-Home's 6-layer net the first two layers are
    never shared (the code's override): a name applies to the top four layers, as the 4-layer table."""
    s = transfer.strip()
    if s and set(s.upper()) <= {"T", "F"} and not s.lower() in ("t", "f"):
        if len(s) != num_layers:
            raise ConfigError(f"transfer {s!r} has {len(s)} letters; the network has {num_layers} conv layers")
        return s.upper()
    if variant == "officehome6":
        return "FF" + named_config(s, 4)
    return named_config(s, num_layers)


def transfer_for_test_type(test_type: int, num_layers: int, variant: str) -> str:
    """The seed README's ``--test_type``: ``// 5`` picks the configuration bin (lasem.md 3 table)."""
    bins = BINS_4 if num_layers == 4 or variant == "officehome6" else BINS_6 if num_layers == 6 else None
    if bins is None:
        raise ConfigError(f"test_type is defined for 4- and 6-layer nets only; use transfer=... for {num_layers} layers")
    b = test_type // 5
    if not 0 <= b < len(bins):
        raise ConfigError(f"test_type {test_type} is outside 0..{5 * len(bins) - 1} for this network")
    return resolve_transfer(bins[b], num_layers, variant)
