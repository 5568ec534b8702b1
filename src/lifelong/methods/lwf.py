"""Learning without Forgetting (Li & Hoiem, ECCV 2016; TPAMI 2017): distil the previous network's
outputs on the new task's data, no old data kept.

Task setting (the paper's): shared parameters ``theta_s`` (backbone), one head per task (old
heads ``theta_o``, new head ``theta_n``). For every task after the first:

1. warm-up (paper, Alg. 1 "warm-up step"): ``theta_s`` and ``theta_o`` frozen (the backbone also
   keeps its BatchNorm statistics), only the new head trained on ``L_new``; ``warmup: true`` by
   default, as the paper's procedure; the paper trains it "to convergence" without an epoch count,
   so ``warmup_epochs`` defaults to ``epochs``, at the main phase's initial lr, constant;
2. joint training of all three: ``L_new + lambda_o * sum_old L_old``, ``L_old`` per old head being
   the paper's modified cross-entropy with ``T = 2`` on the outputs the network had before this task.

``L_old = -sum_k y'_k log yhat'_k`` with ``y' = y^(1/T) / sum y^(1/T)`` for softmax outputs ``y``:
that is ``softmax(z / T)``, so it is ``distill.soft_cross_entropy`` (no ``T^2``; the KL form
``distill.kl_distillation`` differs by the teacher's entropy and a ``T^2`` factor).

Class setting (the class-incremental LwF that BiC's comparison lists: distillation, no exemplars;
BiC's paper does not spell it out, and iCaRL's "LwF-MC" uses a sigmoid variant instead):
one growing head, cross-entropy over every seen class plus ``lambda_o * L_old`` on the old
classes' logits; no warm-up (``setting_defaults``).

Deviation: the paper records the old network's responses once per training image before training;
here a frozen copy (eval mode, no gradients) scores each augmented batch as it is drawn, so the
target matches the augmented input (identical without augmentation). The copy exists only while
a task trains and is never stored.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.scenario import Task
from ..engine.loop import Batch, Phase, StepOutput, TrainContext
from ..nn.heads import MultiHead, head_for
from . import distill
from .base import BackboneFactory, Footprint, Method, TaskMeta, TrainHParams, module_bytes, module_params
from .finetune import CLASS_INCREMENTAL_SCHEDULE


@dataclass
class LwFConfig(TrainHParams):
    """Optimisation as ``finetune`` (the comparison's shared schedule); LwF's own terms from the paper."""

    lambda_o: float = 1.0  # Li & Hoiem Sec. 3: the loss balance weight lambda_o, 1 in most experiments
    T: float = 2.0  # Li & Hoiem Sec. 3: temperature T = 2 (after Hinton et al.)
    warmup: bool = True  # Li & Hoiem Alg. 1: warm-up step (theta_s, theta_o frozen) before joint training
    warmup_epochs: int | None = None  # not given in the paper ("to convergence"); None = as many as epochs


class LwF(Method):
    name = "lwf"
    paper = "Learning without Forgetting (Li & Hoiem, ECCV 2016 / TPAMI 2017)"
    settings = ("task", "class")
    Config = LwFConfig
    setting_defaults = {"class": {**CLASS_INCREMENTAL_SCHEDULE, "warmup": False}}

    def __init__(self, config: LwFConfig, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)
        config.validate()
        self.backbone = make_backbone()
        dim = self.backbone.out_dim
        self.head = head_for(setting, dim)

    def begin_task(self, meta: TaskMeta) -> None:
        super().begin_task(meta)
        self.head.add(meta.num_classes)

    def logits(self, x: torch.Tensor, task_id: int | None) -> torch.Tensor:
        feats = self.backbone(x)
        return self.head.logits(feats, task_id)

    def teacher(self) -> nn.ModuleList:
        """A frozen copy of the network as it is now (before the new task trains): eval mode, no grads."""
        return copy.deepcopy(nn.ModuleList([self.backbone, self.head])).eval().requires_grad_(False)

    def loss_terms(self, x: torch.Tensor, y: torch.Tensor, task_id: int,
                   teacher: nn.ModuleList | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits, L_new, L_old)`` on a batch of task ``task_id``; ``L_old`` sums the modified
        cross-entropy over the old heads (task setting) or is taken on the old classes' logits (class)."""
        cfg: LwFConfig = self.config
        feats = self.backbone(x)
        old_feats = None
        if teacher is not None:
            with torch.no_grad():
                old_feats = teacher[0](x)
        if isinstance(self.head, MultiHead):
            out = self.head(feats, task_id)
            kd = feats.new_zeros(())
            if old_feats is not None:
                for s in range(task_id):
                    kd = kd + distill.soft_cross_entropy(self.head(feats, s), teacher[1](old_feats, s), cfg.T)  # type: ignore[index]
            return out, F.cross_entropy(out, y), kd
        out = self.head(feats)
        n_old = self.head.num_classes - self.tasks[task_id].num_classes
        kd = feats.new_zeros(())
        if old_feats is not None and n_old:
            kd = distill.soft_cross_entropy(out[:, :n_old], teacher[1](old_feats)[:, :n_old], cfg.T)  # type: ignore[index]
        return out, F.cross_entropy(out, y), kd

    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        cfg: LwFConfig = self.config
        teacher = self.teacher() if task.id > 0 else None
        info: dict[str, Any] = {"warmup_epochs": 0}
        if teacher is not None and cfg.warmup and isinstance(self.head, MultiHead):
            info["warmup_epochs"] = self._warm_up(task, ctx)

        def loss(b: Batch) -> StepOutput:
            out, new, old = self.loss_terms(b.x, b.y, task.id, teacher)
            return StepOutput(new + cfg.lambda_o * old, out)

        params = list(self.backbone.parameters()) + list(self.head.parameters())  # theta_s, theta_o, theta_n
        ctx.fit(Phase("train", task.train, params, cfg.epochs, cfg.optim(), loss, cfg.batch_size, modules=[self]))
        return info

    def _warm_up(self, task: Task, ctx: TrainContext) -> int:
        """Train only the new head on ``L_new`` with the shared part frozen (backbone in eval mode)."""
        cfg: LwFConfig = self.config
        head: nn.Linear = self.head.heads[task.id]  # type: ignore[union-attr]
        epochs = cfg.warmup_epochs if cfg.warmup_epochs is not None else cfg.epochs

        def train_mode() -> None:
            self.eval()
            head.train()

        def loss(b: Batch) -> StepOutput:
            with torch.no_grad():
                feats = self.backbone(b.x)
            out = head(feats)
            return StepOutput(F.cross_entropy(out, b.y), out)

        ctx.fit(Phase("warmup", task.train, list(head.parameters()), epochs, cfg.optim(schedule="none"), loss,
                      cfg.batch_size, train_mode=train_mode))
        return epochs

    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        return self.logits(x, task_id if self.setting == "task" else None)

    def footprint(self) -> Footprint:
        heads = self.head.per_task()
        return Footprint(module_params(self), module_bytes(self), [module_bytes(h) for h in heads],
                         "shared backbone + heads fp32; the previous network, a frozen copy while a task trains, "
                         "is never stored (it is the network at the task's start)")
