"""Finetune: one network trained on each task in turn, nothing done against forgetting.

The lower bound of every paper. Task setting: shared backbone, one head per task
(CPG's and LASEM's "finetune"). Class setting: one growing head trained with
cross-entropy on the new classes' data only (the iCaRL/LUCIR papers' lower bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..data.scenario import Task
from ..engine.loop import Batch, Phase, StepOutput, TrainContext
from ..nn.heads import head_for
from .base import BackboneFactory, Footprint, Method, TaskMeta, TrainHParams, module_bytes, module_params

# Class-incremental schedule of the CIFAR papers (iCaRL/LUCIR as in manets.md 3.5): 160 epochs,
# lr 0.1 x0.1 at 80 and 120, batch 128, weight decay 5e-4, momentum 0.9 (no Nesterov).
CLASS_INCREMENTAL_SCHEDULE: dict[str, Any] = dict(
    epochs=160, lr=0.1, milestones=[80, 120], batch_size=128, weight_decay=5e-4, nesterov=False
)


@dataclass
class FinetuneConfig(TrainHParams):
    """Defaults: CPG's per-task schedule (cpg.md 4.8: SGD Nesterov 0.9, lr 1e-2 x0.1 at 50/80 of 100
    epochs, batch 32, wd 4e-5); class setting: ``CLASS_INCREMENTAL_SCHEDULE``."""


class Finetune(Method):
    name = "finetune"
    paper = "lower bound in every seed paper"
    settings = ("task", "class")
    Config = FinetuneConfig
    setting_defaults = {"class": CLASS_INCREMENTAL_SCHEDULE}

    def __init__(self, config: FinetuneConfig, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)
        self.backbone = make_backbone()
        dim = self.backbone.out_dim
        self.head = head_for(setting, dim)

    def begin_task(self, meta: TaskMeta) -> None:
        super().begin_task(meta)
        self.head.add(meta.num_classes)

    def logits(self, x: torch.Tensor, task_id: int | None) -> torch.Tensor:
        feats = self.backbone(x)
        return self.head.logits(feats, task_id)

    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        cfg: FinetuneConfig = self.config
        tid = task.id if self.setting == "task" else None
        current = self.head.trained(task.id)

        def loss(b: Batch) -> StepOutput:
            out = self.logits(b.x, tid)
            return StepOutput(F.cross_entropy(out, b.y), out)

        ctx.fit(Phase("train", task.train, list(self.backbone.parameters()) + list(current.parameters()),
                      cfg.epochs, cfg.optim(), loss, cfg.batch_size, modules=[self]))
        return {}

    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        return self.logits(x, task_id if self.setting == "task" else None)

    def footprint(self) -> Footprint:
        heads = self.head.per_task()
        return Footprint(module_params(self), module_bytes(self), [module_bytes(h) for h in heads],
                         "one shared backbone plus one head (chunk) per task, fp32")
