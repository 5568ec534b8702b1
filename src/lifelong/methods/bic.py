"""BiC (Wu et al., CVPR 2019): distillation with exemplars, then a two-parameter bias correction.

As the original TF code runs it (bic.md):

- **Validation rule** (bic.md 1.1, ``split_sizes``): every class, on arrival, sets aside
  ``r`` of its training images (the first incremental step's validation share, 20 on
  ImageNet-100/1000), never trained on. With ``n`` classes in memory and per-class share
  ``q = M / n``: ``v = floor(0.1 q)`` validation and ``e = ceil(q) - ceil(0.1 q)`` training
  exemplars per class (``e + v <= q``, so the total budget covers both). The bias set of step
  ``s`` holds ``v`` images of EVERY seen class, old and new (class-balanced).
- **Stage 1**: new-class data (minus the reserve) + training exemplars; loss
  ``lambda * L_d + (1 - lambda) * CE`` with ``lambda = n_old / (n_old + n_new)``, ``L_d`` the soft
  cross-entropy at T = 2 against the previous model's logits AFTER its own correction (the
  teacher is the previous deployed classifier); weight decay not on BatchNorm.
- **Stage 2** (steps >= 1): ``q_k = alpha * o_k + beta`` on the newest classes only, trained on
  the bias set with CE + ``0.1 * beta^2 / 2``; everything else frozen. Inference applies only
  the newest step's pair (pitfall 1: PyCIL/FACIL compound all pairs - not done here).
- **Exemplars**: herding on raw (not normalised) features after stage 2; old classes are
  re-herded from their previous exemplars with the new network (bic.md 1.2).

Fixes (with the original behaviour as options): stage 2 runs BatchNorm in eval mode and
shuffles (``bias_bn="batch"``, ``bias_shuffle=false`` give the TF code's train-mode batch
statistics over the class-sorted list; the running statistics are restored afterwards either
way); ``val_min`` (default 1) keeps at least one validation image per class when the 10% rule
would give none (tiny memories; never binds on the papers' protocols).

Not reproducible bit-for-bit: which images are reserved (the original draws them from NumPy's
global stream after the class order, reading train.txt in file order); here a seeded
generator per step draws them. Reported: ``before_correction`` accuracy (variant), and
alpha/beta and the set sizes in each task's ``info``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.imageset import ImageSet
from ..data.scenario import Task
from ..engine.loop import Batch, Phase, StepOutput, TrainContext
from ..engine.optim import OptimConfig
from ..errors import ConfigError
from ..nn.heads import IncrementalHead
from . import distill
from .base import BackboneFactory, Footprint, Method, TaskMeta, TrainHParams, check_choice
from .memory import SELECTIONS, Budget, ExemplarMemory, add_exemplars, indices_of, replay_footprint


@dataclass
class BiCConfig(TrainHParams):
    """Defaults: the paper's CIFAR-100 protocol (bic.md 1.3); ImageNet presets in ``configs/``."""

    epochs: int = 250  # bic.md 1.3
    batch_size: int = 128  # bic.md 1.3
    lr: float = 0.1  # bic.md 1.3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 2e-4  # bic.md 1.3 (paper Sec. 6.2); not applied to BatchNorm (bic.md 3)
    milestones: list[int] = field(default_factory=lambda: [100, 150, 200])  # bic.md 1.3
    gamma: float = 0.1
    wd_decay_steps: int | None = None  # the TF code's wd * 10 / (s + 1) on ImageNet: set 10 (bic.md 3)
    memory: int = 2000  # bic.md 1 "Memory": 2,000 (CIFAR-100, ImageNet-100), 20,000 (ImageNet-1000)
    budget: str = "total"  # a total shared by training exemplars and validation images (bic.md 1)
    selection: str = "herding"  # bic.md 1.2 ("random": baseline)
    herding_normalize: bool = False  # bic.md 1.2: the code herds raw features (iCaRL normalises)
    reherd: bool = True  # bic.md 1.2: old classes re-herded each step (False: keep a prefix, as iCaRL)
    T: float = 2.0  # distillation temperature (paper Sec. 6.2)
    val_fraction: float = 0.1  # the "10% rule" (bic.md 1.1)
    val_min: int = 1  # at least this many validation images per class (0 = the code's rule exactly)
    bias_epochs: int = 200  # _BIAS_EPOCHS = 2 x 100 (bic.md 4)
    bias_lr: float = 0.1  # bic.md 4
    bias_momentum: float = 0.9  # bic.md 4
    bias_milestones: list[int] = field(default_factory=lambda: [60, 120, 160, 180])  # bic.md 4
    bias_batch_size: int = 256  # bic.md 4
    beta_penalty: float = 0.1  # 0.1 * beta^2 / 2 on the offset only (bic.md 4, code only)
    bias_bn: str = "eval"  # "eval" (fix) | "batch" (TF code: frozen net with batch statistics)
    bias_shuffle: bool = True  # False: the code's class-sorted, unshuffled bias set

    def validate(self) -> None:
        super().validate()
        Budget(self.budget, self.memory)
        check_choice("bias_bn", self.bias_bn, ("eval", "batch"))
        check_choice("selection", self.selection, SELECTIONS)
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.val_min < 0:
            raise ConfigError(f"val_min must be >= 0, got {self.val_min}")


def split_sizes(budget: Budget, n_classes: int, val_fraction: float = 0.1, val_min: int = 0) -> tuple[int, int]:
    """(training exemplars, validation images) per class with ``n_classes`` in memory (bic.md 1.1).

    ``q = budget share``; ``v = max(val_min, floor(f q))``; ``e = min(ceil(q) - ceil(f q), floor(q) - v)``.
    The first term is the code's selection count; the second never binds for the code's rule
    (``floor(q) - floor(f q) >= ceil(q) - ceil(f q)`` except when ``q = 10 f q`` is integral and
    then they agree) and keeps ``e + v <= q`` when ``val_min`` raises ``v``.
    """
    q = Fraction(budget.size, max(1, n_classes)) if budget.kind == "total" else Fraction(budget.size)
    fq = Fraction(str(val_fraction)) * q
    v = max(val_min, math.floor(fq))
    e = min(math.ceil(q) - math.ceil(fq), math.floor(q) - v)
    return max(0, e), v


class BiasLayer(nn.Module):
    """One step's correction: ``alpha * o + beta`` on that step's classes' logits; exactly 2 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1))
        self.beta = nn.Parameter(torch.zeros(1))

    def forward(self, logits: torch.Tensor, start: int, end: int) -> torch.Tensor:
        logits = logits.float()  # fp32 under --precision bf16|16: two scalars correct every new-class logit
        return torch.cat([logits[:, :start], self.alpha * logits[:, start:end] + self.beta, logits[:, end:]], dim=1)


class BiC(Method):
    name = "bic"
    paper = "BiC: Large Scale Incremental Learning (Wu et al., CVPR 2019)"
    settings = ("class",)
    Config = BiCConfig

    def __init__(self, config: BiCConfig, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)
        config.validate()
        self.backbone = make_backbone()
        self.head = IncrementalHead(self.backbone.out_dim)
        self.bias_layers = nn.ModuleList()
        self.memory = ExemplarMemory()  # training exemplars
        self.val_memory = ExemplarMemory()  # validation images of old classes (bic.md 1.1)

    @property
    def budget(self) -> Budget:
        return Budget(self.config.budget, self.config.memory)

    def sizes(self, n_classes: int) -> tuple[int, int]:
        return split_sizes(self.budget, n_classes, self.config.val_fraction, self.config.val_min)

    def begin_task(self, meta: TaskMeta) -> None:
        super().begin_task(meta)
        self.head.add(meta.num_classes)
        self.bias_layers.append(BiasLayer())

    def raw_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def correct(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        """Apply step ``step``'s pair to that step's classes (step 0 has none)."""
        if step < 1:
            return logits
        meta = self.tasks[step]
        return self.bias_layers[step](logits, meta.offset, meta.offset + meta.num_classes)

    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        n_old, n_seen = task.offset, task.offset + task.num_classes
        self.budget.require(n_seen, 2, "bic (one training and one validation image per class)")
        reserve = self.sizes(self.tasks[0].num_classes)[1]
        pool, held = self._reserve(task, reserve, ctx.generator(salt=3))
        new_train = task.train.subset(pool)
        train = ImageSet.concat([new_train, self.memory.data()])
        info: dict[str, Any] = {"train_samples": len(train), "reserved_per_class": reserve}
        self._stage1(task, train, ctx)
        if n_old:
            v = self.sizes(n_old)[1]
            self.val_memory.truncate(v)
            val = ImageSet.concat([self.val_memory.data(), task.train.subset(torch.cat([h[:v] for h in held.values()]))])
            info.update(self._stage2(task, val, ctx), val_samples=len(val), val_per_class=v)
        else:
            info.update(alpha=1.0, beta=0.0, val_samples=0)
        self._update_memory(task, new_train, held, ctx)
        info["memory"] = self.memory_size()
        return info

    def _reserve(self, task: Task, r: int, gen: torch.Generator) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Shuffle each new class's images; the last ``r`` are its validation reserve (bic.md 1.1 step 1)."""
        pool, held = [], {}
        for c in range(task.offset, task.offset + task.num_classes):
            idx = indices_of(task.train.labels, c)
            idx = idx[torch.randperm(len(idx), generator=gen)]
            k = min(r, len(idx) - 1)
            pool.append(idx[: len(idx) - k])
            held[c] = idx[len(idx) - k:]
        return torch.sort(torch.cat(pool)).values, held

    def _stage1(self, task: Task, train: Any, ctx: TrainContext) -> None:
        cfg: BiCConfig = self.config
        s, n_old, n_new = len(self.tasks) - 1, task.offset, task.num_classes
        lam = n_old / (n_old + n_new)
        teacher = None
        if n_old:
            teacher = copy.deepcopy(nn.ModuleList([self.backbone, self.head, self.bias_layers[s - 1]]))
            teacher.eval().requires_grad_(False)
            prev = self.tasks[s - 1]

        def loss(b: Batch) -> StepOutput:
            out = self.raw_logits(b.x)
            ce = F.cross_entropy(out, b.y)
            if teacher is None:
                return StepOutput(ce, out)
            with torch.no_grad():
                t = teacher[1](teacher[0](b.x))[:, :n_old]
                if s >= 2:  # the teacher is the previous deployed classifier (bic.md 3)
                    t = teacher[2](t, prev.offset, n_old)
            return StepOutput(lam * distill.soft_cross_entropy(out[:, :n_old], t, cfg.T) + (1 - lam) * ce, out)

        wd = cfg.weight_decay * cfg.wd_decay_steps / (s + 1) if cfg.wd_decay_steps else cfg.weight_decay
        bn = [p for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()]
        bn_ids = {id(p) for p in bn}
        other = [p for p in list(self.backbone.parameters()) + list(self.head.parameters()) if id(p) not in bn_ids]
        groups = [{"params": other, "weight_decay": wd}, {"params": bn, "weight_decay": 0.0}]
        ctx.fit(Phase("train", train, groups, cfg.epochs, cfg.optim(weight_decay=wd), loss, cfg.batch_size,
                      modules=[self.backbone, self.head]))

    def _stage2(self, task: Task, val: Any, ctx: TrainContext) -> dict[str, Any]:
        """Train this step's (alpha, beta) on the balanced validation set, all else frozen (bic.md 4)."""
        cfg: BiCConfig = self.config
        s = len(self.tasks) - 1
        layer = self.bias_layers[s]
        lo, hi = task.offset, task.offset + task.num_classes
        self.eval()
        before = ctx.accuracy(self.raw_logits, val)
        saved = {k: v.clone() for k, v in self.backbone.state_dict().items()}
        if cfg.bias_bn == "eval":  # frozen network, fixed logits: computed once, looked up by Batch.index
            raw = ctx.outputs(self.raw_logits, val)
            logits_of = lambda b: raw[b.index].to(b.x.device)  # noqa: E731
            mode = self.eval
        else:
            def logits_of(b: Batch) -> torch.Tensor:
                with torch.no_grad():
                    return self.raw_logits(b.x)

            def mode() -> None:
                self.eval()
                self.backbone.train()  # batch statistics, as the TF estimator's TRAIN graph

        def loss(b: Batch) -> StepOutput:
            q = layer(logits_of(b), lo, hi)
            return StepOutput(F.cross_entropy(q, b.y) + cfg.beta_penalty * layer.beta.pow(2).sum() / 2, q)

        optim = OptimConfig("sgd", cfg.bias_lr, cfg.bias_momentum, False, 0.0, "multistep", list(cfg.bias_milestones), 0.1)
        ctx.fit(Phase("bias_correction", val, list(layer.parameters()), cfg.bias_epochs, optim, loss,
                      cfg.bias_batch_size, train_mode=mode, augment=False, shuffle=cfg.bias_shuffle))
        self.backbone.load_state_dict(saved)  # running statistics of stage 1 are the deployed ones (bic.md 4)
        self.eval()
        after = ctx.accuracy(lambda x: layer(self.raw_logits(x), lo, hi), val)
        return {"alpha": float(layer.alpha.detach()), "beta": float(layer.beta.detach()),
                "val_accuracy_before": before, "val_accuracy_after": after}

    @torch.no_grad()
    def _update_memory(self, task: Task, new_train: Any, held: dict[int, torch.Tensor], ctx: TrainContext) -> None:
        """Exemplars for the next step: ``e`` training and ``v`` validation images per seen class."""
        cfg: BiCConfig = self.config
        n_old, n_seen = task.offset, task.offset + task.num_classes
        e, v = self.sizes(n_seen)
        self.eval()
        gen = ctx.generator(salt=5)
        if cfg.reherd:
            add_exemplars(ctx, self.memory, self.backbone, self.memory.data(), list(range(n_old)), e, cfg.selection, gen,
                          cfg.herding_normalize)
        self.memory.truncate(e)
        add_exemplars(ctx, self.memory, self.backbone, new_train, list(range(n_old, n_seen)), e, cfg.selection, gen,
                      cfg.herding_normalize)
        self.val_memory.truncate(v)
        self.val_memory.replace({c: (task.train.batch_images(idx[:v]), c) for c, idx in held.items()})

    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        return self.correct(self.raw_logits(x), len(self.tasks) - 1)

    def predict_variants(self, x: torch.Tensor, task_id: int | None = None) -> dict[str, torch.Tensor]:
        return {"before_correction": self.raw_logits(x)}

    def check_stream(self, tasks: list[TaskMeta]) -> None:
        self.budget.require(sum(t.num_classes for t in tasks), 2, "bic (one training and one validation image per class)")

    def memory_size(self) -> int | None:
        return len(self.memory) + len(self.val_memory)

    def footprint(self) -> Footprint:
        return replay_footprint([self.backbone, self.head, self.bias_layers], [self.memory, self.val_memory],
                                list(self.head.chunks), "network fp32 + 2 bias parameters per step + exemplars "
                                "(training and validation) as uint8 images")
