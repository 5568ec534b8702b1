"""Independent: a fresh network per task (CPG's "train from scratch", LASEM's single-task learner).

No forgetting by construction and no transfer; storage grows by one whole network
per task. Task-incremental only: without a task id there is no way to choose a network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.scenario import Task
from ..engine.loop import Batch, Phase, StepOutput, TrainContext
from .base import BackboneFactory, Footprint, Method, TaskMeta, TrainHParams, module_bytes, module_params


@dataclass
class IndependentConfig(TrainHParams):
    """Defaults: CPG's scratch baseline (cpg.md 4.1, ``experiment1/baseline_cifar100.sh``): VGG16-BN,
    100 epochs, lr 1e-2 x0.1 at 50/80, SGD Nesterov 0.9, wd 4e-5, batch 32."""


class Independent(Method):
    name = "independent"
    paper = "CPG 'Scratch' / LASEM single-task learners"
    settings = ("task",)
    Config = IndependentConfig
    guarantees_unforgetting = True

    def __init__(self, config: IndependentConfig, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)
        self.nets = nn.ModuleList()

    def begin_task(self, meta: TaskMeta) -> None:
        super().begin_task(meta)
        backbone = self.make_backbone()
        self.nets.append(nn.Sequential(backbone, nn.Linear(backbone.out_dim, meta.num_classes)))

    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        cfg: IndependentConfig = self.config
        net = self.nets[task.id]

        def loss(b: Batch) -> StepOutput:
            out = net(b.x)
            return StepOutput(F.cross_entropy(out, b.y), out)

        ctx.fit(Phase("train", task.train, net.parameters(), cfg.epochs, cfg.optim(), loss, cfg.batch_size, modules=[net]))
        # What the runner checks the served network against (served_equals_trained): the trained
        # network's accuracy on the training images, test-transformed (nothing is selected).
        net.eval()
        return {"chosen": {"split": "train_eval", "accuracy": ctx.accuracy(net, task.train), "stage": "last epoch"}}

    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        assert task_id is not None
        return self.nets[task_id](x)

    def footprint(self) -> Footprint:
        return Footprint(module_params(self), module_bytes(self), [module_bytes(n) for n in self.nets],
                         "one full network per task, fp32")
