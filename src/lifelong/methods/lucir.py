"""LUCIR (Hou et al., CVPR 2019): cosine classifier, less-forget constraint, inter-class separation.

As the official code and the AANets repository run it (manets.md 2.1, 2.6, 5):

- ``CosineIncrementalHead`` (sigma * cosine, sigma learnable from 1); at every step >= 1 the new
  rows are **imprinted** (unit mean of the new classes' unit features times the mean norm of the
  old rows), old rows are frozen, new rows, sigma and the backbone are trained;
- loss ``CE + lambda_t * L_LF + lw_mr * L_MR``: ``L_LF`` = mean ``1 - cos(f, f_ref)`` on all samples
  with the adaptive ``lambda_t = lambda_base * sqrt(n_old / n_new)`` (the code's ratio; the paper
  prints it inverted, hshustc #4); ``L_MR`` = margin ranking of the ground-truth old-class cosine
  against the top-K new-class cosines (``distill``);
- exemplars by herding on unit features; after the step the memory shrinks to the new quota;
- optional **class-balanced finetuning** (LUCIR's ImageNet script, ``--cb_finetune``): set
  ``cbf_epochs`` (20 there) to train only the class rows on the exemplar set with the backbone and
  BatchNorm frozen, lr 0.01 x0.1 at epoch 10. Its loss is CE + MR: with the backbone frozen the
  less-forget term is a constant (the original adds it anyway; it has no gradient).

The network's (CNN) accuracy is the reported one (manets.md 5); the nearest-mean-of-exemplars
classifier is evaluated as the ``nme`` variant. LUCIR removes the final ReLU of the backbone
(``backbone.last_relu=false`` in the presets); the digits conv net has no such option.

Deviations: memory ``floor(M / classes)`` per class (the AANets code's ``ceil`` can exceed M);
milestones fire at the end of an epoch (the original steps its scheduler first, so decays come
one epoch earlier, manets.md 3.3 - shift ``milestones`` by -1 for that).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..data.imageset import ImageSet
from ..data.scenario import Task
from ..engine.loop import Batch, Phase, StepOutput, TrainContext
from ..engine.optim import OptimConfig
from ..errors import ConfigError
from ..nn.cosine import CosineIncrementalHead
from . import distill
from .base import BackboneFactory, Footprint, Method, TaskMeta, TrainHParams, check_choice
from .memory import (SELECTIONS, Budget, ClassMeans, ExemplarMemory, NearestMeanClassifiers, add_exemplars,
                     class_means, new_class_means, replay_footprint)


@dataclass
class LUCIRConfig(TrainHParams):
    """Defaults: LUCIR's CIFAR-100 run script and the AANets CIFAR README (manets.md 3.5, 5)."""

    epochs: int = 160  # LUCIR cifar100 run.sh / manets.md 3.5
    batch_size: int = 128  # manets.md 3.5
    lr: float = 0.1  # base_lr1 = base_lr2 = 0.1 (manets.md 3.5)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4  # custom_weight_decay (manets.md 3.5)
    milestones: list[int] = field(default_factory=lambda: [80, 120])  # [0.5E, 0.75E] (manets.md 3.3)
    gamma: float = 0.1
    memory: int = 2000  # AANets CIFAR README: fixed 2,000 total (LUCIR's own code: 20/class, budget=per_class)
    budget: str = "total"  # memory.Budget: "total" | "per_class"
    selection: str = "herding"  # manets.md 1.3 ("random": baseline)
    lambda_base: float = 5.0  # --lamda 5 on CIFAR, 10 on ImageNet (manets.md 5)
    K: int = 2  # top-K new-class cosines in the margin loss (manets.md 5)
    margin: float = 0.5  # --dist (manets.md 5)
    lw_mr: float = 1.0  # margin-loss weight (manets.md 5)
    sigma: float = 1.0  # initial cosine scale, learnable (manets.md 2.1)
    imprint: bool = True  # weight imprinting of new rows (manets.md 2.6)
    cbf_epochs: int | None = None  # class-balanced finetuning; LUCIR ImageNet --cb_finetune: 20
    cbf_lr: float = 0.01  # cbf_class_incremental_cosine_imagenet.py
    cbf_milestones: list[int] = field(default_factory=lambda: [10])
    classifier: str = "cnn"  # what predict() returns: "cnn" (reported, manets.md 5) | "nme"
    nme_flip: bool = True  # class means average each exemplar with its flip (when the benchmark flips)

    def validate(self) -> None:
        super().validate()
        Budget(self.budget, self.memory)
        check_choice("classifier", self.classifier, ("nme", "cnn"))
        check_choice("selection", self.selection, SELECTIONS)
        if self.K < 1:
            raise ConfigError(f"K must be at least 1, got {self.K}")


class LUCIR(NearestMeanClassifiers, Method):
    name = "lucir"
    paper = "LUCIR: Learning a Unified Classifier Incrementally via Rebalancing (Hou et al., CVPR 2019)"
    settings = ("class",)
    Config = LUCIRConfig

    def __init__(self, config: LUCIRConfig, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)
        config.validate()
        self.backbone = make_backbone()
        self.head = CosineIncrementalHead(self.backbone.out_dim, config.sigma)
        self.memory = ExemplarMemory()
        self.means = ClassMeans()

    @property
    def budget(self) -> Budget:
        return Budget(self.config.budget, self.config.memory)

    def begin_task(self, meta: TaskMeta) -> None:
        super().begin_task(meta)
        self.head.add(meta.num_classes)

    def lambda_t(self, n_old: int, n_new: int) -> float:
        """Adaptive less-forget weight ``lambda_base * sqrt(n_old / n_new)`` (manets.md 5)."""
        return distill.adaptive_lambda(self.config.lambda_base, n_old, n_new)

    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        cfg: LUCIRConfig = self.config
        n_old, n_new = task.offset, task.num_classes
        n_seen = n_old + n_new
        self.budget.require(n_seen, 1, "lucir")
        train = ImageSet.concat([task.train, self.memory.data()])
        teacher = None
        if n_old:
            teacher = copy.deepcopy(self.backbone).eval().requires_grad_(False)
            if cfg.imprint:
                self._imprint(task, ctx)
            params = list(self.backbone.parameters()) + list(self.head.chunks[-1].parameters()) + [self.head.sigma]
        else:
            params = list(self.parameters())
        lam = self.lambda_t(n_old, n_new)

        def loss(b: Batch) -> StepOutput:
            feats = self.backbone(b.x)
            cos = self.head.cosines(feats)
            out = self.head.sigma * cos
            value = F.cross_entropy(out, b.y)
            if teacher is not None:
                with torch.no_grad():
                    ref = teacher(b.x)
                value = value + lam * distill.less_forget(feats, ref)
                margin = distill.margin_ranking(cos, b.y, n_old, cfg.K, cfg.margin, lambda s, c: ctx.shard_mean(s, c, b))
                value = value + cfg.lw_mr * margin
            return StepOutput(value, out)

        ctx.fit(Phase("train", train, [p for p in params if p.requires_grad], cfg.epochs, cfg.optim(), loss,
                      cfg.batch_size, modules=[self.backbone, self.head]))
        self._update_memory(task, ctx)
        if cfg.cbf_epochs and n_old:
            self._balanced_finetune(n_old, ctx)
        self.eval()
        flip = cfg.nme_flip and ctx.augment_spec.flip
        self.means.means = class_means(ctx, self.backbone, self.memory, n_seen, flip).to(self.means.means.device)
        return {"train_samples": len(train), "lambda": lam, "sigma": float(self.head.sigma.detach()),
                "exemplars_per_class": self.budget.per_class(n_seen), "memory": len(self.memory)}

    @torch.no_grad()
    def _imprint(self, task: Task, ctx: TrainContext) -> None:
        self.eval()
        means = new_class_means(ctx, self.backbone, task.train, range(task.offset, task.offset + task.num_classes))
        self.head.imprint(len(self.head.chunks) - 1, means)

    @torch.no_grad()
    def _update_memory(self, task: Task, ctx: TrainContext) -> None:
        m = self.budget.per_class(task.offset + task.num_classes)
        self.eval()
        self.memory.truncate(m)
        add_exemplars(ctx, self.memory, self.backbone, task.train, list(range(task.offset, task.offset + task.num_classes)),
                      m, self.config.selection, ctx.generator(salt=1))

    def _balanced_finetune(self, n_old: int, ctx: TrainContext) -> None:
        """Class rows only, on the exemplars, backbone and BN frozen (LUCIR ``ft_flag=2``; sigma stays)."""
        cfg: LUCIRConfig = self.config

        def loss(b: Batch) -> StepOutput:
            with torch.no_grad():
                feats = self.backbone(b.x)
            cos = self.head.cosines(feats)
            out = self.head.sigma * cos
            margin = distill.margin_ranking(cos, b.y, n_old, cfg.K, cfg.margin, lambda s, c: ctx.shard_mean(s, c, b))
            value = F.cross_entropy(out, b.y) + cfg.lw_mr * margin
            return StepOutput(value, out)

        optim = OptimConfig("sgd", cfg.cbf_lr, cfg.momentum, False, cfg.weight_decay, "multistep", list(cfg.cbf_milestones), 0.1)
        ctx.fit(Phase("balanced_finetune", self.memory.data(), [c.weight for c in self.head.chunks], cfg.cbf_epochs or 0,
                      optim, loss, cfg.batch_size, train_mode=self.eval))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def footprint(self) -> Footprint:
        return replay_footprint([self.backbone, self.head, self.means], [self.memory], list(self.head.chunks),
                                "network fp32 + class means + exemplars as uint8 images")
