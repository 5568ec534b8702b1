"""Optimizer and learning-rate schedule factories shared by every method.

Methods describe *what* (``OptimConfig``); the loop builds the objects. Weight decay
is applied only to the parameter groups a method passes, so isolation methods can
keep it off weights owned by earlier tasks (cpg.md pitfall 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from ..errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "rmsprop_tf")
SCHEDULES = ("none", "multistep", "cosine", "plateau", "step")  # user choices; "follow" is set by methods


class DecayCounter:
    """How often a plateau schedule has decayed in the current phase, read by the schedules that
    follow it (CPG's picking-mask lr takes x0.2 at the weights' first plateau decay, cpg.md 4.5,
    ``CPG_imagenet_main.py`` / ``CPG_face_main.py``). Reset when the leading schedule is built."""

    def __init__(self) -> None:
        self.decays = 0


@dataclass
class OptimConfig:
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "multistep"
    milestones: list[int] = field(default_factory=list)  # epochs at which lr *= gamma
    gamma: float = 0.1
    step_size: int | None = None  # step: lr *= gamma every step_size epochs (None: a third of the phase, CLR)
    patience: int = 10  # plateau: decay once this many epochs in a row bring no improvement
    max_decays: int | None = None  # plateau: stop one epoch after this many decays (cpg.md 4.8)
    # plateau: publishes its decay count here; follow: lr *= gamma when that count reaches each milestone
    counter: DecayCounter | None = None


def build_optimizer(params: Iterable[Any], cfg: OptimConfig) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop_tf":  # TF1 RMSProp: rho 0.9, eps inside the sqrt, ms starts at 1 (lasem.md 6)
        from .rmsprop_tf import RMSpropTF

        return RMSpropTF(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")


class Schedule:
    """Epoch-level learning-rate schedule; ``step(metric)`` after each epoch returns False to stop early."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int) -> None:
        self.cfg = cfg
        self.decays = 0
        self.best = float("inf")
        self.bad_epochs = 0
        if cfg.schedule == "multistep":
            self.inner: Any = torch.optim.lr_scheduler.MultiStepLR(optimizer, sorted(cfg.milestones), cfg.gamma)
        elif cfg.schedule == "cosine":
            self.inner = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs))
        elif cfg.schedule == "step":  # StepLR (CLR main.py: step_size = epochs // 3, clr.md 4)
            self.inner = torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_size or max(1, epochs // 3), cfg.gamma)
        elif cfg.schedule in ("none", "plateau", "follow"):
            self.inner = None
        else:
            raise ConfigError(f"unknown schedule {cfg.schedule!r}; use one of {', '.join(SCHEDULES)}")
        self.optimizer = optimizer
        self.followed = 0  # follow: milestones of the leader's decay count already applied
        if cfg.schedule == "follow" and cfg.counter is None:
            raise ConfigError("a 'follow' schedule needs the DecayCounter of the plateau schedule it follows")
        if cfg.schedule == "plateau" and cfg.counter is not None:
            cfg.counter.decays = 0

    def _scale(self, factor: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] *= factor

    def step(self, metric: float) -> bool:
        """Advance one epoch. ``metric`` is minimised (plateau). Returns whether to continue.

        Plateau, as the CPG ImageNet/face code (``CPG_imagenet_main.py``, ``CPG_face_main.py``;
        cpg.md 4.8): an epoch that does not beat the best so far is a bad epoch; after ``patience``
        bad epochs in a row the lr is multiplied by ``gamma`` and the count restarts; the epoch after
        the ``max_decays``-th decay is the last one (the stop test precedes the decay test there).
        """
        if self.inner is not None:
            self.inner.step()
            return True
        if self.cfg.schedule == "follow":
            assert self.cfg.counter is not None
            due = sum(1 for m in self.cfg.milestones if m <= self.cfg.counter.decays)
            for _ in range(due - self.followed):
                self._scale(self.cfg.gamma)
            self.followed = max(self.followed, due)
            return True
        if self.cfg.schedule != "plateau":
            return True
        if metric < self.best - 1e-12:
            self.best, self.bad_epochs = metric, 0
        else:
            self.bad_epochs += 1
        if self.cfg.max_decays is not None and self.decays >= self.cfg.max_decays:
            return False
        if self.bad_epochs >= self.cfg.patience:
            self.bad_epochs = 0
            self.decays += 1
            self._scale(self.cfg.gamma)
            if self.cfg.counter is not None:
                self.cfg.counter.decays = self.decays
        return True
