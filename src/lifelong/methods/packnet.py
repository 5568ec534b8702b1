"""PackNet (Mallya and Lazebnik, CVPR 2018), the variant in the CPG repository (cpg.md 7.1).

Each task takes every free weight, trains, frees a fixed fraction of its own weights per
layer by magnitude (one-shot), and retrains the rest; the freed weights (zeroed) go to
the next task. Inference for task k uses every weight owned by tasks 1..k. As in the CPG
repository's CIFAR script (``experiment1/PackNet_cifar100.sh``), BatchNorm and biases are
trained per task and stored per task (the original PackNet freezes them after ImageNet).

Deviations from the original code (cpg.md 9): weight decay is applied by hand to the
task's own weights only and the optimiser's is 0 (pitfall 4); freed weights are zeroed at
once and after every step (pitfall 3); nothing depends on a train-accuracy gate (pitfall 5:
the original saves a checkpoint only when train accuracy > 0.97).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..data.scenario import Task
from ..engine.loop import Phase, TrainContext
from ..errors import ConfigError
from .base import BackboneFactory, TrainHParams
from .pruning import IsolationMethod, prune_layerwise


@dataclass
class PackNetConfig(TrainHParams):
    """Defaults: the CPG repository's PackNet on CIFAR (cpg.md 7.1): 100 epochs, SGD Nesterov 0.9,
    lr 1e-2 x0.1 at 50/80, batch 32, wd 4e-5 (on own weights); prune 0.6 per layer; retrain 30
    epochs at lr 1e-3 x0.1 at 25."""

    prune_ratio: float = 0.6  # cpg.md 7.1: one-shot, per layer, of the task's own weights
    retrain_epochs: int = 30  # cpg.md 7.1
    retrain_lr: float = 1e-3  # cpg.md 7.1
    retrain_milestones: list[int] = field(default_factory=lambda: [25])  # cpg.md 7.1

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.prune_ratio < 1.0:
            raise ConfigError(f"prune_ratio must be in [0, 1), got {self.prune_ratio}")


class PackNet(IsolationMethod):
    settings = ("task",)  # a task id chooses the sub-network
    guarantees_unforgetting = True  # the runner verifies old tasks' logits stay bit-identical
    name = "packnet"
    paper = "PackNet (Mallya & Lazebnik, CVPR 2018), CPG-repo CIFAR variant"
    Config = PackNetConfig

    def __init__(self, config: PackNetConfig, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)

    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        cfg: PackNetConfig = self.config
        t = task.id
        frozen = self.mb.frozen_values(t)
        claimed = self.mb.claim_free(t)
        decay = self.decay_hook(t, cfg.weight_decay)
        # With nothing left to own (claimed == 0) only BN/biases and the head learn.
        ctx.fit(Phase("train", task.train, self.train_params(t), cfg.epochs, cfg.optim(weight_decay=0.0),
                      self.loss_fn(t), cfg.batch_size, after_backward=decay, train_mode=self.train_all))
        freed = 0
        if cfg.prune_ratio > 0 and claimed:
            freed = prune_layerwise(self.mb, t, cfg.prune_ratio)
            retrain = cfg.optim(lr=cfg.retrain_lr, milestones=list(cfg.retrain_milestones), weight_decay=0.0)
            ctx.fit(Phase("retrain", task.train, self.train_params(t), cfg.retrain_epochs, retrain, self.loss_fn(t),
                          cfg.batch_size, after_backward=decay, after_step=self.mb.zero_free, train_mode=self.train_all))
        self.mb.assert_unchanged(frozen)
        info = {"claimed": claimed, "pruning_ratio": cfg.prune_ratio if claimed else 0.0, "freed": freed,
                **self.ownership_info(t), "chosen": self.trained_accuracy(ctx, task)}
        self.mb.finish_task(t)
        return info

    def task_summary(self, info: dict[str, Any]) -> str:
        """The one decision: the fraction of the task's weights freed (one shot, per layer)."""
        return f"pruning ratio {info['pruning_ratio']:g} (owns {info['owned_fraction']:.3f} of the network)"

    def footprint_note(self, counts: Any) -> str:
        return "fp32 weights, per-task BN/biases/heads and a ceil(log2(T+1))-bit owner index per weight (cpg.md 6)"
