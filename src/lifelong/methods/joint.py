"""Joint: retrain on all data seen so far after every task, the upper bound.

It breaks the no-old-data rule on purpose (LASEM's single-network baseline, the
"joint" rows of the class-incremental papers). By default the network is
re-initialised at each task, so row i of the accuracy matrix is a model trained
jointly on tasks 1..i; ``from_scratch=False`` continues from the previous weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..data.imageset import ImageSet
from ..data.scenario import Task
from ..engine.loop import Batch, Phase, StepOutput, TrainContext
from ..nn.heads import MultiHead, head_for
from .base import BackboneFactory, Footprint, Method, TaskMeta, TrainHParams, module_bytes, module_params
from .finetune import CLASS_INCREMENTAL_SCHEDULE


@dataclass
class JointConfig(TrainHParams):
    """Defaults as ``finetune`` (CPG's schedule; class setting: the CIFAR class-incremental one)."""

    from_scratch: bool = True  # re-initialise before each task (a true joint model per row)


class Joint(Method):
    name = "joint"
    paper = "upper bound (LASEM single network; class-incremental joint)"
    settings = ("task", "class")
    Config = JointConfig
    setting_defaults = {"class": CLASS_INCREMENTAL_SCHEDULE}

    def __init__(self, config: JointConfig, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)
        self._fresh()
        # The data seen so far is training input, not model state: kept outside state_dict and
        # rebuilt from the scenario on resume (``remember``), so checkpoints stay model-sized.
        self._seen: list[ImageSet] = []

    def _fresh(self) -> None:
        self.backbone = self.make_backbone()
        dim = self.backbone.out_dim
        self.head = head_for(self.setting, dim)

    def begin_task(self, meta: TaskMeta) -> None:
        super().begin_task(meta)
        self.head.add(meta.num_classes)

    def remember(self, task: Task) -> None:
        """Add a finished task's training data to the pool."""
        self._seen.append(task.train.with_tasks(task.id))

    on_resume = remember

    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        cfg: JointConfig = self.config
        if cfg.from_scratch and len(self.tasks) > 1:
            device = next(self.parameters()).device
            self._fresh()
            for m in self.tasks:
                self.head.add(m.num_classes)
            self.to(device)
        data = ImageSet.concat(self._seen + [task.train.with_tasks(task.id)])

        def loss(b: Batch) -> StepOutput:
            feats = self.backbone(b.x)
            if isinstance(self.head, MultiHead):
                return StepOutput(self.head.forward_mixed(feats, b.task, b.y))  # type: ignore[arg-type]
            out = self.head(feats)
            return StepOutput(F.cross_entropy(out, b.y), out)

        ctx.fit(Phase("train", data, self.parameters(), cfg.epochs, cfg.optim(), loss, cfg.batch_size, modules=[self]))
        self.remember(task)
        return {"train_samples": len(data)}

    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        feats = self.backbone(x)
        return self.head.logits(feats, task_id)

    def footprint(self) -> Footprint:
        heads = self.head.per_task()
        return Footprint(module_params(self), module_bytes(self), [module_bytes(h) for h in heads],
                         "one network and all heads, fp32 (plus the whole training set, not counted)")
