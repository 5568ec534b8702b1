"""STL and SNN, the LASEM paper's single-task and single-network baselines (lasem.md 8), with its protocol.

- ``stl``: one independent network per task (``independent`` with the LASEM training protocol
  of ``lasem_common``: TF1 RMSProp, stream-wide lr decay, peak accuracy, no augmentation).
- ``snn``: *one* network including the output layer, trained on each task in turn; every task must
  have the same number of classes, and the task id is ignored at test time.

Both take any backbone; the paper's is ``--backbone lasem_cnn``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.scenario import Task
from ..engine.loop import Batch, StepOutput, TrainContext
from ..errors import ConfigError
from ..nn.lasem_cnn import init_plain_
from .base import BackboneFactory, Footprint, Method, TaskMeta, module_bytes, module_params
from .independent import Independent
from .lasem_common import TOY_DEFAULTS, LasemHParams, fit_lasem_phase


class STL(Independent):
    name = "stl"
    paper = "Lee, Behpour, Eaton (ICML 2021): single-task learners"
    Config = LasemHParams
    val_fraction = 0.15  # the peak accuracy's validation split (see selective.TransferMethod)
    benchmark_defaults = TOY_DEFAULTS

    def __init__(self, config: LasemHParams, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)
        self.register_buffer("global_epoch", torch.zeros((), dtype=torch.long))

    def begin_task(self, meta: TaskMeta) -> None:
        super().begin_task(meta)
        init_plain_(self.nets[-1][-1])  # the output layer as every LASEM FC layer: trunc. normal 0.05, bias 0.2

    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        net = self.nets[task.id]

        def loss(b: Batch) -> StepOutput:
            out = net(b.x)
            return StepOutput(F.cross_entropy(out, b.y), out)

        info = fit_lasem_phase(self, ctx, task, list(net.parameters()), loss, net, self.config)
        net.eval()  # the served network is the last-epoch one; the runner checks it against this
        info["chosen"] = {"split": "train_eval", "accuracy": ctx.accuracy(net, task.train), "stage": "last epoch"}
        return info

    def task_summary(self, info: dict[str, Any]) -> str:
        peak = (info.get("peak") or {}).get("test_accuracy")
        return "" if peak is None else f"peak {peak:.3f}"


class SNN(Method):
    name = "snn"
    paper = "Lee, Behpour, Eaton (ICML 2021): single neural net shared by all tasks, output layer included"
    settings = ("task",)
    Config = LasemHParams
    val_fraction = 0.15
    benchmark_defaults = TOY_DEFAULTS

    def __init__(self, config: LasemHParams, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)
        self.backbone = make_backbone()
        self.out: nn.Linear | None = None
        self.register_buffer("global_epoch", torch.zeros((), dtype=torch.long))

    def check_stream(self, tasks: list[TaskMeta]) -> None:
        sizes = sorted({m.num_classes for m in tasks})
        if len(sizes) > 1:
            raise ConfigError(f"snn shares its output layer: every task needs the same number of classes, got {sizes}")

    def begin_task(self, meta: TaskMeta) -> None:
        super().begin_task(meta)
        if self.out is None:
            self.out = init_plain_(nn.Linear(self.backbone.out_dim, meta.num_classes))  # type: ignore[assignment]
        elif self.out.out_features != meta.num_classes:
            raise ConfigError(f"snn shares its output layer: task {meta.id + 1} has {meta.num_classes} classes, "
                              f"not {self.out.out_features}")

    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        assert self.out is not None
        return self.out(self.backbone(x))

    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        def loss(b: Batch) -> StepOutput:
            out = self.predict(b.x)
            return StepOutput(F.cross_entropy(out, b.y), out)

        return fit_lasem_phase(self, ctx, task, list(self.backbone.parameters()) + list(self.out.parameters()),  # type: ignore[union-attr]
                               loss, self.predict, self.config)

    def task_summary(self, info: dict[str, Any]) -> str:
        return STL.task_summary(self, info)  # type: ignore[arg-type]

    def footprint(self) -> Footprint:
        return Footprint(module_params(self), module_bytes(self), [], "one network, output layer included, for every task")
