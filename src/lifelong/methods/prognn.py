"""Progressive neural networks (Rusu et al. 2016) as the CPG and LASEM baselines configure them (clr.md 6).

One column per task (a fresh ``make_backbone()``; LASEM's network is ``--backbone lasem_cnn``),
with lateral adapters from every earlier column into each level after the first
(``nn/progressive.py``). Earlier columns and their adapters are frozen: out of the optimiser,
``requires_grad`` off, and kept in eval mode whatever mode the method is put in (``train``
below: BatchNorm statistics and dropout, pitfall 2), so every earlier task's logits stay
bit-identical (the runner checks it).

With published weights (``backbone.weights``) and ``source_column`` the published network is a
frozen column 0 that only feeds laterals, as CPG's ProgressiveNet whose first column is the
ImageNet ResNet-50 (clr.md 6.5); each task's column also starts from those weights.

Columns and adapters are built once the input shape is known (the first ``fit_task``; recorded in
the checkpoint's structure, so ``rebuild`` recreates them before tensors are loaded).

Defaults: our isolation baselines' per-task schedule (CPG's, cpg.md 4.8: SGD Nesterov 0.9, lr 1e-2
x0.1 at 50/80 of 100 epochs, batch 32, weight decay 4e-5; CPG does not publish its ProgressiveNet
schedule) and LASEM's adapter (reduction s = 1, alpha ~ truncated normal std 0.05; clr.md 6.3).
``protocol: lasem`` trains as the LASEM code trains its ProgNN baseline (``methods/lasem_common.py``:
TF1 RMSProp, lr0 / (1 + d * stream epoch), batch 10, no augmentation, peak accuracy in ``info``),
with LASEM's initialisation of the adapters and heads (truncated normal 0.05, biases 0.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.scenario import Task
from ..engine.loop import Batch, Phase, StepOutput, TrainContext
from ..errors import ConfigError
from ..nn.heads import MultiHead
from ..nn.progressive import ProgressiveNet, lasem_init
from .base import BackboneFactory, Footprint, Method, TaskMeta, TrainHParams, check_choice, module_bytes
from .lasem_common import fit_lasem_phase

# protocol: lasem (lasem.md 6, the code's CIFAR-100 column; clr.md 6.3).
LASEM_PROTOCOL: dict[str, Any] = dict(optimizer="rmsprop_tf", lr=1e-4, lr_decay=2.5e-4, epochs=2000, batch_size=10,
                                      momentum=0.0, nesterov=False, weight_decay=0.0, schedule="none", milestones=[],
                                      augment=False, init="lasem")


@dataclass
class ProgNNConfig(TrainHParams):
    """Defaults: CPG's per-task schedule (cpg.md 4.8) and LASEM's adapters (clr.md 6.3)."""

    reduction: float = 1.0  # clr.md 6.3: LASEM dim_reduction_scale s, adapter width floor(C / (s * k))
    lateral_levels: list[int] | None = None  # 1-based levels receiving laterals; None: every level after the first
    alpha_std: float = 0.05  # clr.md 6.3: alpha ~ truncated normal, std 0.05
    init: str = "torch"  # adapters and heads: "torch" (PyTorch's layer defaults) or "lasem" (trunc. normal 0.05, biases 0.2)
    source_column: bool = True  # clr.md 6.5: with published weights, they form a frozen column 0
    augment: bool = True  # the benchmark's training augmentation (LASEM uses none)
    protocol: str = "plain"  # "plain" (the loop with the fields above) or "lasem" (LASEM's ProgNN training)
    lr_decay: float = 0.0  # protocol lasem: lr = lr0 / (1 + lr_decay * stream epoch) (lasem.md 6: 1/4000)
    track_peak: bool = True  # protocol lasem: per-epoch val/test accuracy of the current task (lasem.md 7)

    def validate(self) -> None:
        super().validate()
        check_choice("init", self.init, ("torch", "lasem"))
        check_choice("protocol", self.protocol, ("plain", "lasem"))
        if self.reduction <= 0 or self.alpha_std < 0:
            raise ConfigError(f"reduction ({self.reduction}) must be > 0 and alpha_std ({self.alpha_std}) >= 0")
        if self.lateral_levels is not None and any(lv < 2 for lv in self.lateral_levels):
            raise ConfigError(f"lateral_levels {self.lateral_levels}: levels are numbered from 1 and level 1 has no laterals")


class ProgNN(Method):
    name = "prognn"
    paper = "Progressive Neural Networks (Rusu et al. 2016), as CPG and LASEM run them"
    settings = ("task",)
    Config = ProgNNConfig
    guarantees_unforgetting = True
    variant_defaults = {"protocol": {"lasem": LASEM_PROTOCOL}}

    def __init__(self, config: ProgNNConfig, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)
        self.published = getattr(make_backbone(), "pretrained_from", None)
        self.offset = 1 if self.published is not None and config.source_column else 0
        self.pnn = ProgressiveNet(config.reduction, config.lateral_levels, config.alpha_std)
        self.heads = MultiHead(0)
        self.input_shape: list[int] | None = None
        self.active: int | None = None  # the column being trained; every other one stays in eval mode
        self.register_buffer("global_epoch", torch.zeros((), dtype=torch.long))  # protocol lasem's lr decay

    # ------------------------------------------------------------------ structure
    def begin_task(self, meta: TaskMeta) -> None:
        super().begin_task(meta)
        self.heads.heads.append(nn.Identity())  # replaced by Linear(column width, classes) when its column is built

    def extra_structure(self) -> dict[str, Any]:
        return {"input_shape": self.input_shape}

    def rebuild_extra(self, structure: dict[str, Any]) -> None:
        if structure.get("input_shape"):
            self.input_shape = list(structure["input_shape"])
            self._grow(len(self.tasks))

    def _grow(self, tasks: int) -> None:
        """Columns (and heads) for the first ``tasks`` tasks plus the source column; all frozen."""
        assert self.input_shape is not None
        while len(self.pnn.columns) < tasks + self.offset:
            col = self.pnn.add_column(self.make_backbone(), self.input_shape)
            k = len(self.pnn.columns) - 1
            t = k - self.offset
            if t >= 0:
                device = next(col.parameters()).device
                self.heads.heads[t] = nn.Linear(col.out_dim, self.tasks[t].num_classes).to(device)
            if self.config.init == "lasem":
                lasem_init(self.pnn.laterals[k])
                if t >= 0:
                    lasem_init(self.heads.heads[t])
            self.freeze(k, t)

    def freeze(self, k: int, t: int) -> None:
        for m in (self.pnn.columns[k], self.pnn.laterals[k]) + ((self.heads.heads[t],) if t >= 0 else ()):
            m.requires_grad_(False)

    def trainable(self, t: int) -> list[nn.Module]:
        """What task ``t`` trains: its column, its adapters, its head."""
        k = t + self.offset
        return [self.pnn.columns[k], self.pnn.laterals[k], self.heads.heads[t]]

    def train(self, mode: bool = True) -> "ProgNN":
        """Train mode reaches only the column being trained, its adapters and head: frozen columns
        stay in eval mode (BatchNorm statistics, dropout) however the loop sets modes."""
        super().train(False)
        if mode and self.active is not None:
            for m in self.trainable(self.active):
                m.train()
        self.training = mode
        return self

    # ------------------------------------------------------------------ the contract
    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        cfg: ProgNNConfig = self.config
        t = task.id
        shape = [int(task.train.shape[0]), ctx.augment_spec.size, ctx.augment_spec.size]
        if self.input_shape is not None and self.input_shape != shape:
            raise ConfigError(f"task {task.name!r} has input shape {shape}, earlier tasks {self.input_shape}")
        self.input_shape = shape
        self._grow(t + 1)
        params = [p for m in self.trainable(t) for p in m.parameters()]
        for p in params:
            p.requires_grad_(True)

        def loss(b: Batch) -> StepOutput:
            out = self.predict(b.x, t)
            return StepOutput(F.cross_entropy(out, b.y), out)

        self.active = t
        extra: dict[str, Any] = {}
        try:
            if cfg.protocol == "lasem":
                extra = fit_lasem_phase(self, ctx, task, params, loss, lambda x: self.predict(x, t), cfg)  # type: ignore[arg-type]
            else:
                ctx.fit(Phase("column", task.train, params, cfg.epochs, cfg.optim(), loss, cfg.batch_size,
                              modules=[self], augment=cfg.augment))
        finally:
            self.active = None
        self.freeze(t + self.offset, t)
        self.eval()
        k = t + self.offset
        return {**extra, "column": k + 1, "source_column": self.published if self.offset else None,
                "column_parameters": sum(p.numel() for p in self.pnn.columns[k].parameters()),
                "lateral_parameters": self.pnn.lateral_parameters(k)}

    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        assert task_id is not None
        return self.heads(self.pnn(x, task_id + self.offset), task_id)

    def footprint(self) -> Footprint:
        per_task = []
        for t in range(min(len(self.tasks), len(self.pnn.columns) - self.offset)):
            per_task.append(sum(module_bytes(m) for m in self.trainable(t)))
        laterals = [self.pnn.lateral_parameters(k) for k in range(len(self.pnn.columns))]
        note = (f"{len(self.pnn.columns)} columns ({self.offset} frozen source), lateral parameters per column "
                f"{laterals}, fp32 state as stored")
        return Footprint(sum(p.numel() for p in self.parameters()), module_bytes(self), per_task, note)

    def task_summary(self, info: dict[str, Any]) -> str:
        return f"column {info['column']}, {info['lateral_parameters']:,} lateral parameters"
