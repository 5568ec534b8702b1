"""AANets (Liu, Schiele, Sun, CVPR 2021; arXiv v1 "MANets"): a stable and a plastic block per
residual level, aggregated by learned weights, wrapped around iCaRL or LUCIR.

As the official code (``adaptive-aggregation-networks/``) runs it (manets.md 2-5):

- phase 0: one plain network, cosine head, cross-entropy; from phase 1 the network is a
  ``DualBranchNet`` whose two branches are both loaded from phase 0 (stable: frozen weights times
  scales initialised to 1; plastic: ``free`` or ``fixed``), so it starts out equal to phase 0;
  the reference model is a frozen copy of the phase-0 net (phase 1), then of both branches and the
  alphas (manets.md 2.6);
- per epoch: one pass over new data + exemplars updating both branches, new class rows and sigma
  with the baseline's loss (``baseline=lucir``: CE + lambda_t L_LF + L_MR; ``icarl``: CE +
  beta T^2 KL), then one pass over the "balanced" subset updating only the alphas with CE (3.4).
  Both are phases of the shared loop (``Phase.interleave``), never an epoch loop here;
- the balanced subset (built once per phase): 20 x nb_cl new images drawn with replacement plus
  all old exemplars (``balanced=code``, 3.2) or 20 (or fewer) per class (``stratified``, 6.4);
- ``alpha_grad=clean`` zeroes alpha gradients before each alpha step (the paper's intent);
  ``accumulate`` never clears them, so each alpha step uses the running sum of every gradient
  since phase 1, main passes included, as the official LUCIR trainer does (6.1); the sum is a
  buffer, so ``--resume`` continues it.

Shared, not copied: losses (``distill``), memory, herding, imprinting (``memory.new_class_means``),
cosine head. Deviations are LUCIR's (``floor`` budget, milestones at epoch end; see ``lucir.py``)
plus ``branch_1=fixed`` freezing branch 1 only (the code also froze the new rows and sigma).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.imageset import ImageSet
from ..data.scenario import Task
from ..engine.loop import Batch, Phase, StepOutput, TrainContext
from ..engine.optim import OptimConfig
from ..errors import ConfigError
from ..nn.cosine import CosineIncrementalHead
from ..nn.dual_branch import DualBranchNet, plastic_copy, stable_copy
from . import distill
from .base import BackboneFactory, Footprint, Method, TaskMeta, TrainHParams, check_choice
from .memory import (SELECTIONS, Budget, ClassMeans, ExemplarMemory, NearestMeanClassifiers, add_exemplars,
                     class_means, indices_of, new_class_means, replay_footprint)

BRANCHES = ("ss", "free", "fixed")


@dataclass
class AANetsConfig(TrainHParams):
    """Defaults: the AANets CIFAR-100 README commands (manets.md 3.5)."""

    epochs: int = 160  # manets.md 3.5 (CIFAR)
    batch_size: int = 128  # train_batch_size (manets.md 3.2)
    lr: float = 0.1  # base_lr1 = base_lr2 (manets.md 3.5)
    momentum: float = 0.9  # main and alpha SGD (manets.md 3.3)
    nesterov: bool = False
    weight_decay: float = 5e-4  # custom_weight_decay, also on scales, BN and alphas (manets.md 2.3, 3.3)
    milestones: list[int] = field(default_factory=lambda: [80, 120])  # [0.5E, 0.75E] (manets.md 3.3)
    gamma: float = 0.1
    memory: int = 2000  # CIFAR README: fixed 2,000 total, no --dynamic_budget (manets.md 1.3, 6.3)
    budget: str = "total"  # memory.Budget: "total" | "per_class" (ImageNet: 20 per class)
    selection: str = "herding"  # manets.md 1.3
    baseline: str = "lucir"  # --baseline icarl|lucir (manets.md 4, 5)
    branch_mode: str = "dual"  # --branch_mode dual|single; single = branch 1 only, no alphas (manets.md 2.5)
    branch_1: str = "ss"  # --branch_1: scales on frozen weights (manets.md 2.3)
    branch_2: str = "free"  # --branch_2: free | fixed (ImageNet-Subset commands) | ss (manets.md 2.4)
    fusion_lr: float = 1e-5  # seed README --fusion_lr; code default 1e-8, pre-refactor 1e-7 (manets.md 3.3); 0: fixed
    fusion_milestones: list[int] | None = None  # alpha schedule; None: the main milestones (manets.md 3.3, CIFAR)
    alpha_init: float = 0.5  # nn.Parameter([0.5]) per level (manets.md 2.5)
    alpha_grad: str = "clean"  # "clean": paper's intent | "accumulate": official LUCIR trainer (manets.md 6.1)
    balanced: str = "code"  # "code": with replacement (manets.md 3.2) | "stratified" (manets.md 6.4)
    balanced_per_class: int = 20  # nb_protos (manets.md 3.2)
    balanced_batch_size: int = 100  # --test_batch_size: 100 CIFAR, 50 ImageNet commands (manets.md 3.2)
    lambda_base: float = 5.0  # LUCIR --lamda (manets.md 5)
    K: int = 2  # LUCIR top-K (manets.md 5)
    margin: float = 0.5  # LUCIR --dist (manets.md 5)
    lw_mr: float = 1.0  # LUCIR (manets.md 5)
    T: float = 2.0  # --icarl_T (manets.md 4)
    beta: float = 0.25  # --icarl_beta (manets.md 4)
    sigma: float = 1.0  # CosineLinear sigma init (manets.md 2.1)
    imprint: bool = True  # manets.md 2.6
    classifier: str = "cnn"  # FC is the reported accuracy (issue #42, manets.md 1.4) | "nme"
    nme_flip: bool = True  # class means with horizontal flips (manets.md 6.6: the code reverses channels)

    def validate(self) -> None:
        TrainHParams.validate(replace(self, fusion_lr=1.0))  # fusion_lr may be 0 (the README's baselines)
        if self.fusion_lr < 0:
            raise ConfigError(f"fusion_lr must be >= 0, got {self.fusion_lr}")
        Budget(self.budget, self.memory)
        for name, allowed in (("baseline", ("icarl", "lucir")), ("branch_mode", ("dual", "single")),
                              ("branch_1", BRANCHES), ("branch_2", BRANCHES), ("alpha_grad", ("clean", "accumulate")),
                              ("balanced", ("code", "stratified")), ("classifier", ("cnn", "nme")),
                              ("selection", SELECTIONS)):
            check_choice(name, getattr(self, name), allowed)
        if self.balanced_per_class < 1 or self.balanced_batch_size < 1 or self.K < 1:
            raise ConfigError("balanced_per_class, balanced_batch_size and K must be at least 1")


class AANets(NearestMeanClassifiers, Method):
    name = "aanets"
    paper = "AANets: Adaptive Aggregation Networks for Class-Incremental Learning (Liu, Schiele, Sun, CVPR 2021)"
    settings = ("class",)
    Config = AANetsConfig
    # The toy budgets scale every *_lr with their smaller batch; the alpha pass's batch is not scaled.
    benchmark_defaults = {b: {"fusion_lr": 1e-5} for b in ("digits", "mnist", "fashion-mnist")}

    def __init__(self, config: AANetsConfig, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)
        config.validate()
        self.net: nn.Module = make_backbone()  # plain in phase 0; two branches (or branch 1) from phase 1
        self.head = CosineIncrementalHead(self.net.out_dim, config.sigma)
        self.memory = ExemplarMemory()
        self.means = ClassMeans()

    @property
    def budget(self) -> Budget:
        return Budget(self.config.budget, self.config.memory)

    def begin_task(self, meta: TaskMeta) -> None:
        super().begin_task(meta)
        self.head.add(meta.num_classes)
        if len(self.tasks) == 2:  # phase 1 (also when rebuild replays it before loading a checkpoint)
            self.net = self._branches(self.net)

    def _branches(self, base: nn.Module) -> nn.Module:
        """Both branches loaded with every phase-0 weight (manets.md 2.6)."""
        cfg: AANetsConfig = self.config
        make = lambda kind: stable_copy(base) if kind == "ss" else plastic_copy(base, fixed=kind == "fixed")  # noqa: E731
        if cfg.branch_mode == "single":
            return make(cfg.branch_1)
        return DualBranchNet(make(cfg.branch_1), make(cfg.branch_2), cfg.alpha_init)

    def reference(self) -> nn.ModuleList:
        """Frozen ``[network, head]`` before this step: the phase-0 net in phase 1 (the plastic copy
        equals it exactly), later both branches with their alphas (manets.md 2.6)."""
        net = self.net.plastic if isinstance(self.net, DualBranchNet) and len(self.tasks) == 2 else self.net
        return copy.deepcopy(nn.ModuleList([net, self.head])).eval().requires_grad_(False)

    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        cfg: AANetsConfig = self.config
        n_old, n_seen = task.offset, task.offset + task.num_classes
        self.budget.require(n_seen, 1, "aanets")
        net = self.net
        dual = isinstance(net, DualBranchNet)
        accumulate = dual and cfg.alpha_grad == "accumulate"
        if accumulate and ctx.precision == "16":
            raise ConfigError("alpha_grad=accumulate sums loss-scaled gradients under --precision 16; use 32 or bf16")
        train = ImageSet.concat([task.train, self.memory.data()])
        teacher = self.reference() if n_old else None
        if n_old and cfg.imprint:
            self._imprint(task, ctx)
        if n_old:  # old rows frozen, alphas only in their own pass (manets.md 3.3)
            trainable = net.branch_parameters() if dual else [p for p in net.parameters() if p.requires_grad]
            params = trainable + list(self.head.chunks[-1].parameters()) + [self.head.sigma]
        else:
            params = [p for p in self.parameters() if p.requires_grad]
        lam = distill.adaptive_lambda(cfg.lambda_base, n_old, task.num_classes) if cfg.baseline == "lucir" else 0.0
        alphas: list[list[float]] = []
        record = (lambda e, s: alphas.append(net.alpha_list())) if dual else None  # noqa: E731
        alpha_pass, balanced_size = None, 0
        if dual and cfg.fusion_lr > 0:
            balanced = self.balanced_set(task, ctx)
            balanced_size = len(balanced)
            alpha_pass = self.alpha_phase(balanced, record)
        if accumulate:
            net.alphas.grad = net.alpha_grad_sum.clone()  # the running sum goes on across steps and resumes
        ctx.fit(Phase("train", train, params, cfg.epochs, cfg.optim(), self._loss(teacher, n_old, lam, ctx), cfg.batch_size,
                      modules=[net, self.head], interleave=alpha_pass,
                      on_epoch_end=record if alpha_pass is None else None))
        if accumulate and net.alphas.grad is not None:
            net.alpha_grad_sum.copy_(net.alphas.grad)
        self._update_memory(task, ctx)
        info: dict[str, Any] = {"train_samples": len(train), "lambda": lam, "sigma": float(self.head.sigma.detach()),
                                "exemplars_per_class": self.budget.per_class(n_seen), "memory": len(self.memory)}
        if dual:
            info.update(alphas=alphas, alpha_final=net.alpha_list(), balanced_samples=balanced_size)
        return info

    def _loss(self, teacher: nn.ModuleList | None, n_old: int, lam: float, ctx: TrainContext):  # noqa: ANN202
        """Step 1's loss (manets.md 4, 5): the baseline's, on the fused network."""
        cfg: AANetsConfig = self.config

        def loss(b: Batch) -> StepOutput:
            feats = self.net(b.x)
            cos = self.head.cosines(feats)
            out = self.head.sigma * cos
            value = F.cross_entropy(out, b.y)
            if teacher is None:
                return StepOutput(value, out)
            with torch.no_grad():
                ref = teacher[0](b.x)
            if cfg.baseline == "lucir":
                value = value + lam * distill.less_forget(feats, ref)
                margin = distill.margin_ranking(cos, b.y, n_old, cfg.K, cfg.margin, lambda s, c: ctx.shard_mean(s, c, b))
                value = value + cfg.lw_mr * margin
            else:
                with torch.no_grad():
                    old = teacher[1](ref)[:, :n_old]
                value = value + cfg.beta * distill.kl_distillation(out[:, :n_old], old, cfg.T)
            return StepOutput(value, out)

        return loss

    def alpha_phase(self, balanced: ImageSet, record: Any) -> Phase:
        """Step 2 (manets.md 3.4): CE on the balanced subset, only the alphas stepped, BN in eval mode,
        gradients taken w.r.t. the alphas alone; cleared before each step unless ``accumulate``."""
        cfg: AANetsConfig = self.config
        net = self.net
        assert isinstance(net, DualBranchNet)

        def loss(b: Batch) -> StepOutput:
            out = self.head(net(b.x))
            return StepOutput(F.cross_entropy(out, b.y), out)

        milestones = cfg.milestones if cfg.fusion_milestones is None else cfg.fusion_milestones
        optim = OptimConfig("sgd", cfg.fusion_lr, cfg.momentum, False, cfg.weight_decay, "multistep", list(milestones),
                            cfg.gamma)
        return Phase("alphas", balanced, [net.alphas], cfg.epochs, optim, loss, cfg.balanced_batch_size,
                     train_mode=self.eval, shuffle=cfg.balanced == "stratified", on_epoch_end=record,
                     zero_grad=cfg.alpha_grad == "clean", grad_only_params=True)

    def balanced_set(self, task: Task, ctx: TrainContext) -> ImageSet:
        """``code``: ``balanced_per_class * nb_cl`` new images uniformly with replacement + every old
        exemplar (manets.md 3.2); ``stratified``: k = min(balanced_per_class, smallest old class) random
        images per new class and the best k exemplars of each old class (manets.md 6.4)."""
        cfg: AANetsConfig = self.config
        gen = ctx.generator(salt=2)
        old = self.memory.data()
        if cfg.balanced == "code":
            new = task.train.subset(torch.randint(len(task.train), (cfg.balanced_per_class * task.num_classes,), generator=gen))
            return ImageSet.concat([new, old])
        k = min([cfg.balanced_per_class] + list(self.memory.counts().values()))
        new_rows = [indices_of(task.train.labels, c) for c in range(task.offset, task.offset + task.num_classes)]
        new_idx = torch.cat([r[torch.randperm(len(r), generator=gen)[:k]] for r in new_rows])
        old_idx = torch.cat([indices_of(old.labels, c)[:k] for c in self.memory.classes()])
        return ImageSet.concat([task.train.subset(new_idx), old.subset(old_idx)])

    @torch.no_grad()
    def _imprint(self, task: Task, ctx: TrainContext) -> None:
        self.eval()
        means = new_class_means(ctx, self.net, task.train, range(task.offset, task.offset + task.num_classes))
        self.head.imprint(len(self.head.chunks) - 1, means)

    @torch.no_grad()
    def _update_memory(self, task: Task, ctx: TrainContext) -> None:
        """Shrink old classes to the new quota, herd the new ones with the fused net, recompute means."""
        n_seen = task.offset + task.num_classes
        m = self.budget.per_class(n_seen)
        self.eval()
        self.memory.truncate(m)
        add_exemplars(ctx, self.memory, self.net, task.train, list(range(task.offset, n_seen)), m, self.config.selection,
                      ctx.generator(salt=1))
        flip = self.config.nme_flip and ctx.augment_spec.flip
        self.means.means = class_means(ctx, self.net, self.memory, n_seen, flip).to(self.means.means.device)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def task_summary(self, info: dict[str, Any]) -> str:
        return "alphas " + " ".join(f"{a:.6f}" for a in info["alpha_final"]) if info.get("alpha_final") else ""

    def alpha_history(self, infos: list[dict[str, Any]]) -> list[list[list[float]]]:
        """Per task, per epoch, the alphas of every level (``alphas.png``; empty before phase 1)."""
        return [list((info or {}).get("alphas", [])) for info in infos]

    def footprint(self) -> Footprint:
        return replay_footprint([self.net, self.head, self.means], [self.memory], list(self.head.chunks),
                                "both branches fp32 (stable: frozen phase-0 weights + per-channel-pair scales + BN; "
                                "plastic: full), alphas, class means, exemplars as uint8 images")
