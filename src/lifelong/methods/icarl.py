"""iCaRL (Rebuffi et al., CVPR 2017): exemplar replay, distillation, nearest-mean-of-exemplars.

``variant="original"`` (default) is the paper: a plain linear head trained with sigmoid binary
cross-entropy whose old-class targets are the previous network's sigmoid outputs
(``distill.sigmoid_distillation``), herding on L2-normalised features, a fixed total memory
shared by the seen classes, and the nearest-mean-of-exemplars classifier (manets.md 4, last
bullet). The loss is normalised as the Theano code's mean over the full 100-unit output layer
(``distill.sigmoid_distillation``), and weight decay is lasagne's ``1e-5 * sum w^2`` on conv and
dense weights only: a gradient of ``2e-5 w``, nothing on biases or BatchNorm.

``variant="aanets"`` is iCaRL as the AANets/LUCIR code runs it (manets.md 4): LUCIR's cosine head
(imprinted new rows, frozen old rows) trained with cross-entropy plus ``beta * T^2 * KL``
distillation, with that code's own schedule (``AANETS_SCHEDULE``: 160 epochs, lr 0.1 x0.1 at 80/120,
wd 5e-4 on every parameter, manets.md 3.5), applied whenever ``variant=aanets`` is chosen; its
presets (``configs/icarl-aanets-*``) also drop the backbone's final ReLU.

Both classifiers are evaluated after every step: ``predict`` gives the one named by
``classifier`` (``nme``, the paper's), ``predict_variants`` the other (``metrics.json["variants"]``).

Deviations: the head grows with the classes (the original allocates all 100 outputs and
trains unseen ones toward 0; the loss keeps its normalisation); memory uses ``floor(K / classes)`` per class (never above K);
class means average each exemplar with its horizontal flip only when the scenario's
augmentation flips (iCaRL's CIFAR practice; digits are not flipped).
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
from ..nn.cosine import CosineIncrementalHead
from ..nn.heads import IncrementalHead
from . import distill
from .base import BackboneFactory, Footprint, Method, TaskMeta, TrainHParams, check_choice, weight_decay_groups
from .finetune import CLASS_INCREMENTAL_SCHEDULE
from .memory import (SELECTIONS, Budget, ClassMeans, ExemplarMemory, NearestMeanClassifiers, add_exemplars,
                     class_means, new_class_means, replay_footprint)


# The AANets/LUCIR code's schedule for its iCaRL (manets.md 3.5, CIFAR column): 160 epochs, lr 0.1
# x0.1 at 80/120, batch 128, wd 5e-4 (PyTorch SGD, every parameter), momentum 0.9.
AANETS_SCHEDULE: dict[str, Any] = {**CLASS_INCREMENTAL_SCHEDULE, "gamma": 0.1}


@dataclass
class ICaRLConfig(TrainHParams):
    """Defaults: Rebuffi et al. 2017 Sec. 4 (CIFAR-100) and its Theano code."""

    epochs: int = 70  # iCaRL Sec. 4: 70 epochs
    batch_size: int = 128  # iCaRL Sec. 4
    lr: float = 2.0  # iCaRL Sec. 4: "learning rate of 2.0"
    momentum: float = 0.9  # iCaRL Theano code (lasagne momentum 0.9)
    nesterov: bool = False
    weight_decay: float = 1e-5  # iCaRL Sec. 4; lasagne l2 = sum of squares (gradient 2 wd w), weights only
    milestones: list[int] = field(default_factory=lambda: [49, 63])  # iCaRL Sec. 4: divided by 5 at 49 and 63
    gamma: float = 0.2  # iCaRL Sec. 4: "divided by 5"
    memory: int = 2000  # iCaRL Sec. 4: K = 2000
    budget: str = "total"  # iCaRL: fixed total K shared by the seen classes (memory.Budget)
    selection: str = "herding"  # iCaRL Alg. 4 ("random": baseline)
    variant: str = "original"  # "original" (paper) | "aanets" (AANets code, manets.md 4)
    classifier: str = "nme"  # what predict() returns: "nme" (iCaRL's classifier) | "cnn"
    T: float = 2.0  # aanets variant: --icarl_T (manets.md 3.5)
    beta: float = 0.25  # aanets variant: --icarl_beta (manets.md 3.5)
    nme_flip: bool = True  # iCaRL: class means over exemplars and their flips (when the benchmark flips)

    def validate(self) -> None:
        super().validate()
        Budget(self.budget, self.memory)
        check_choice("variant", self.variant, ("original", "aanets"))
        check_choice("classifier", self.classifier, ("nme", "cnn"))
        check_choice("selection", self.selection, SELECTIONS)


class ICaRL(NearestMeanClassifiers, Method):
    name = "icarl"
    paper = "iCaRL: Incremental Classifier and Representation Learning (Rebuffi et al., CVPR 2017)"
    settings = ("class",)
    Config = ICaRLConfig
    variant_defaults = {"variant": {"aanets": AANETS_SCHEDULE}}

    def __init__(self, config: ICaRLConfig, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)
        config.validate()
        self.backbone = make_backbone()
        dim = self.backbone.out_dim
        self.head: IncrementalHead | CosineIncrementalHead = (
            CosineIncrementalHead(dim) if config.variant == "aanets" else IncrementalHead(dim))
        self.memory = ExemplarMemory()
        self.means = ClassMeans()

    @property
    def budget(self) -> Budget:
        return Budget(self.config.budget, self.config.memory)

    def begin_task(self, meta: TaskMeta) -> None:
        super().begin_task(meta)
        self.head.add(meta.num_classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        cfg: ICaRLConfig = self.config
        n_old, n_seen = task.offset, task.offset + task.num_classes
        self.budget.require(n_seen, 1, "icarl")
        train = ImageSet.concat([task.train, self.memory.data()])
        teacher = None
        if n_old:
            teacher = copy.deepcopy(torch.nn.ModuleList([self.backbone, self.head])).eval().requires_grad_(False)
        aanets = cfg.variant == "aanets"
        if aanets and n_old:  # imprint the new rows from the current features (manets.md 2.6)
            self.eval()
            means = new_class_means(ctx, self.backbone, task.train, range(n_old, n_seen))
            self.head.imprint(len(self.head.chunks) - 1, means)  # type: ignore[operator]
        if aanets and n_old:  # old rows frozen (manets.md 4: "frozen old rows")
            params = list(self.backbone.parameters()) + list(self.head.chunks[-1].parameters()) + [self.head.sigma]
        else:
            params = list(self.backbone.parameters()) + list(self.head.parameters())
        optim = cfg.optim()
        if not aanets:  # lasagne's l2 penalty: 1e-5 * sum w^2 over conv/dense weights (gradient 2e-5 w)
            params = weight_decay_groups(params, [self.backbone, self.head], 2 * cfg.weight_decay)
            optim = cfg.optim(weight_decay=0.0)
        outputs = ctx.num_classes or n_seen  # the original's output layer covers the whole stream

        def loss(b: Batch) -> StepOutput:
            out = self.logits(b.x)
            old = None
            if teacher is not None:
                with torch.no_grad():
                    old = teacher[1](teacher[0](b.x))[:, :n_old]
            if not aanets:
                return StepOutput(distill.sigmoid_distillation(out, b.y, old, outputs), out)
            value = F.cross_entropy(out, b.y)
            if old is not None:
                value = value + cfg.beta * distill.kl_distillation(out[:, :n_old], old, cfg.T)
            return StepOutput(value, out)

        ctx.fit(Phase("train", train, params, cfg.epochs, optim, loss, cfg.batch_size, modules=[self.backbone, self.head]))
        self._update_memory(task, ctx)
        return {"train_samples": len(train), "exemplars_per_class": self.budget.per_class(n_seen),
                "memory": len(self.memory)}

    @torch.no_grad()
    def _update_memory(self, task: Task, ctx: TrainContext) -> None:
        """Reduce old classes to the new quota, herd the new ones, recompute every class mean (iCaRL Alg. 2)."""
        cfg: ICaRLConfig = self.config
        n_seen = task.offset + task.num_classes
        m = self.budget.per_class(n_seen)
        self.eval()
        self.memory.truncate(m)
        add_exemplars(ctx, self.memory, self.backbone, task.train, list(range(task.offset, n_seen)), m, cfg.selection,
                      ctx.generator(salt=1))
        flip = cfg.nme_flip and ctx.augment_spec.flip
        self.means.means = class_means(ctx, self.backbone, self.memory, n_seen, flip).to(self.means.means.device)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def footprint(self) -> Footprint:
        return replay_footprint([self.backbone, self.head, self.means], [self.memory], list(self.head.chunks),
                                "network fp32 + class means + exemplars as uint8 images")
