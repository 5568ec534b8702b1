"""Elastic weight consolidation (Kirkpatrick et al., PNAS 2017) and online EWC (Schwarz et al., ICML 2018).

After each task, the diagonal of the Fisher information ``F`` of the task's training data is
estimated at the trained parameters ``theta*``; later tasks add ``lam / 2 * sum_i F_i (theta_i -
theta*_i)^2`` to their loss, over the shared parameters only: the backbone, and in the class
setting also the growing head (every class's row keeps being trained there); task-setting heads
are never trained after their task, so they take no part.

- ``online: false`` (Kirkpatrick et al.): one penalty per finished task, each with its own Fisher
  and anchor (the paper allows separate penalties or their sum), so state grows by two copies of
  the shared parameters per task.
- ``online: true`` (Schwarz et al., "online EWC"): one running Fisher ``F* <- gamma F* + F_t`` and
  the latest anchor; the penalty uses ``gamma F*`` (as Schwarz et al. and van de Ven et al.'s code).

Fisher (``fisher``): ``exact`` (default) is the true Fisher of the model's predictive distribution,
``E_x sum_c p(c|x) (d log p(c|x) / d theta)^2``, as van de Ven et al.'s code computes it by default
(``--fisher-labels all``, models/cl/continual_learner.py); ``sample`` draws one label from
``p(.|x)`` (its Monte-Carlo estimate), ``predicted`` takes the argmax (FACIL's default), and
``empirical`` the true label (the "empirical Fisher", Avalanche's choice). Gradients are per sample
(``torch.func.vmap``; exactly batches of size 1, van de Ven's ``--fisher-batch 1``), never the square
of a batch-mean gradient (which underestimates F by about the batch size); eval mode, test
transform, on ``fisher_samples`` images of the task's training split (default: all of them).

``lam`` is not transferable between setups: van de Ven et al. 2020 ("Three scenarios", code
``param_values.py``) use 1e5 (Task-IL) and 1e9 (Class-IL) on split MNIST with Adam; Avalanche
squares batch-mean gradients, a Fisher about a batch size smaller, so its lambdas do not compare
either. With SGD, the penalty's curvature ``lam * sum_tasks F_i`` times the lr must stay below 2
(Nesterov momentum 0.9: about 1.4) or that parameter oscillates and the run diverges to NaN; each
task's ``info["lr_lam_fisher_max"]`` reports it. The default ``lam = 10`` is the largest power of
ten that kept it below 1 on the toy budgets (Split Fashion-MNIST class setting, lr 0.05: 0.48;
``lam = 100`` gave 5.2 and diverged); raise it where that figure allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ..data.scenario import Task
from ..engine.loop import Batch, Phase, StepOutput, TrainContext
from ..errors import ConfigError
from ..nn.heads import head_for
from .base import BackboneFactory, Footprint, Method, TaskMeta, TrainHParams, check_choice, module_bytes, module_params
from .finetune import CLASS_INCREMENTAL_SCHEDULE

FISHERS = ("exact", "sample", "predicted", "empirical")


class ParamBuffers(nn.Module):
    """One buffer per parameter, keyed by the parameter's name: state that checkpoints carry.

    Entries are created (zeros) in ``begin_task``, so ``Method.rebuild`` recreates every entry
    before a checkpoint's tensors load into them."""

    @staticmethod
    def key(name: str) -> str:
        return name.replace(".", "__")

    def ensure(self, name: str, like: torch.Tensor) -> None:
        if self.key(name) not in self._buffers:
            self.register_buffer(self.key(name), torch.zeros_like(like).detach())

    def __contains__(self, name: str) -> bool:
        return self.key(name) in self._buffers

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._buffers[self.key(name)]  # type: ignore[return-value]

    def values(self) -> Iterator[torch.Tensor]:
        return (b for b in self._buffers.values() if b is not None)


@dataclass
class EWCConfig(TrainHParams):
    """Optimisation as ``finetune`` (the comparison's shared schedule); EWC's own terms below."""

    lam: float = 10.0  # Kirkpatrick et al. give no transferable value; the largest stable power of 10 here (module doc)
    online: bool = False  # Kirkpatrick et al.: a separate penalty per task; true: Schwarz et al. 2018
    gamma: float = 1.0  # online decay; van de Ven et al. 2020 code (--gamma 1.)
    fisher: str = "exact"  # van de Ven et al. code default (--fisher-labels all); sample | predicted | empirical
    fisher_samples: int | None = None  # None: every training image of the task (van de Ven: --fisher-n None)
    fisher_chunk: int = 64  # per-sample gradients computed this many at a time (memory, not the estimate)

    def validate(self) -> None:
        super().validate()
        check_choice("fisher", self.fisher, FISHERS)
        if self.lam < 0 or not 0 <= self.gamma <= 1:
            raise ConfigError(f"ewc needs lam >= 0 and 0 <= gamma <= 1, got lam={self.lam}, gamma={self.gamma}")
        if self.fisher_samples is not None and self.fisher_samples < 1 or self.fisher_chunk < 1:
            raise ConfigError("fisher_samples and fisher_chunk must be at least 1")


class EWC(Method):
    name = "ewc"
    paper = "Overcoming catastrophic forgetting in neural networks (Kirkpatrick et al., PNAS 2017); online EWC (Schwarz et al., 2018)"
    settings = ("task", "class")
    Config = EWCConfig
    setting_defaults = {"class": CLASS_INCREMENTAL_SCHEDULE}

    def __init__(self, config: EWCConfig, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)
        config.validate()
        self.backbone = make_backbone()
        dim = self.backbone.out_dim
        self.head = head_for(setting, dim)
        self.fisher = nn.ModuleList()  # one ParamBuffers per task (online: one in all)
        self.anchor = nn.ModuleList()
        self.register_buffer("consolidated", torch.zeros((), dtype=torch.long))  # tasks whose Fisher is stored

    def begin_task(self, meta: TaskMeta) -> None:
        super().begin_task(meta)
        self.head.add(meta.num_classes)
        if not self.config.online or not len(self.fisher):
            self.fisher.append(ParamBuffers())
            self.anchor.append(ParamBuffers())
        for name, p in self.shared():
            self.fisher[-1].ensure(name, p)  # type: ignore[operator]
            self.anchor[-1].ensure(name, p)  # type: ignore[operator]

    def shared(self) -> list[tuple[str, nn.Parameter]]:
        """The parameters later tasks train: the backbone; class setting, the growing head too."""
        named = [("backbone." + n, p) for n, p in self.backbone.named_parameters()]
        if self.setting == "class":
            named += [("head." + n, p) for n, p in self.head.named_parameters()]
        return named

    def logits(self, x: torch.Tensor, task_id: int | None) -> torch.Tensor:
        feats = self.backbone(x)
        return self.head.logits(feats, task_id)

    def forward(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        return self.logits(x, task_id)

    # ------------------------------------------------------------------ the penalty
    def penalty_slots(self) -> range:
        """The stored (Fisher, anchor) pairs in use: one per finished task (online: the one)."""
        done = int(self.consolidated)
        return range(min(done, 1)) if self.config.online else range(done)

    def penalty(self) -> torch.Tensor:
        """``lam / 2 * sum_tasks sum_i F_i (theta_i - theta*_i)^2`` (online: one term, ``gamma F*``)."""
        cfg: EWCConfig = self.config
        total = next(self.backbone.parameters()).new_zeros(())
        for s in self.penalty_slots():
            fisher, anchor = self.fisher[s], self.anchor[s]
            for name, p in self.shared():
                if name in fisher:  # type: ignore[operator]
                    total = total + (fisher[name] * (p - anchor[name]).pow(2)).sum()  # type: ignore[index]
        return (cfg.lam / 2) * (cfg.gamma if cfg.online else 1.0) * total

    # ------------------------------------------------------------------ the Fisher
    @torch.no_grad()  # outside the transforms only: torch.func.grad still differentiates inside
    def estimate_fisher(self, data: Any, ctx: TrainContext, task_id: int) -> dict[str, torch.Tensor]:
        """Diagonal Fisher of ``data`` at the current parameters, per sample, averaged (module doc)."""
        cfg: EWCConfig = self.config
        tid = task_id if self.setting == "task" else None
        params = {n: p.detach() for n, p in self.shared()}
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        if cfg.fisher_samples is not None and cfg.fisher_samples < len(data):
            data = data.subset(torch.randperm(len(data), generator=ctx.generator(salt=2))[: cfg.fisher_samples])
        gen = ctx.generator(salt=3)

        def nll(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(functional_call(self, p, (x[None], tid)), y[None])

        per_sample = vmap(grad(nll), in_dims=(None, 0, 0))
        was_training = self.training
        self.eval()
        for b in ctx.iterate(data, cfg.fisher_chunk, train=False):
            probs = self.logits(b.x, tid).float().softmax(1)
            if cfg.fisher == "exact":  # every label, weighted by its predicted probability
                labels = [(torch.full_like(b.y, c), probs[:, c]) for c in range(probs.shape[1])]
            elif cfg.fisher == "sample":
                labels = [(torch.multinomial(probs.cpu(), 1, generator=gen).flatten().to(b.y.device), None)]
            else:
                labels = [(probs.argmax(1) if cfg.fisher == "predicted" else b.y, None)]
            for y, weight in labels:
                grads = per_sample(params, b.x, y)
                for n, g in grads.items():
                    sq = g.pow(2)
                    fisher[n] += (sq if weight is None else sq * weight.view(-1, *[1] * (sq.dim() - 1))).sum(0)
        self.train(was_training)
        return {n: f / max(1, len(data)) for n, f in fisher.items()}

    @torch.no_grad()
    def consolidate(self, fisher: dict[str, torch.Tensor], task_id: int) -> None:
        """Store the task's Fisher (online: fold it into the running one) and anchor the parameters."""
        cfg: EWCConfig = self.config
        slot = 0 if cfg.online else task_id
        for name, p in self.shared():
            stored = self.fisher[slot][name]  # type: ignore[index]
            if cfg.online:
                stored.mul_(cfg.gamma).add_(fisher[name])
            else:
                stored.copy_(fisher[name])
            self.anchor[slot][name].copy_(p.detach())  # type: ignore[index]
        self.consolidated.fill_(task_id + 1)

    # ------------------------------------------------------------------ training
    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        cfg: EWCConfig = self.config
        tid = task.id if self.setting == "task" else None
        current = self.head.trained(task.id)
        regularise = int(self.consolidated) > 0 and cfg.lam > 0

        def loss(b: Batch) -> StepOutput:
            out = self.logits(b.x, tid)
            value = F.cross_entropy(out, b.y)
            return StepOutput(value + self.penalty() if regularise else value, out)

        ctx.fit(Phase("train", task.train, list(self.backbone.parameters()) + list(current.parameters()),
                      cfg.epochs, cfg.optim(), loss, cfg.batch_size, modules=[self]))
        fisher = self.estimate_fisher(task.train, ctx, task.id)
        self.consolidate(fisher, task.id)
        return {"fisher": cfg.fisher, "fisher_samples": min(len(task.train), cfg.fisher_samples or len(task.train)),
                "fisher_mean": float(sum(f.sum() for f in fisher.values()) / sum(f.numel() for f in fisher.values())),
                "fisher_max": float(torch.stack([f.max().cpu() for f in fisher.values()]).max()),
                "lr_lam_fisher_max": cfg.lr * self.curvature()}

    @torch.no_grad()
    def curvature(self) -> float:
        """The largest curvature the penalty now puts on one parameter: ``lam * sum_tasks F_i``
        (online: ``lam * gamma * F*_i``). Times the lr, SGD is stable below 2 (Nesterov 0.9: ~1.36)."""
        cfg: EWCConfig = self.config
        tops = [torch.zeros(())]
        for name, _ in self.shared():
            total = sum(self.fisher[s][name] for s in self.penalty_slots() if name in self.fisher[s])  # type: ignore[operator,index]
            if isinstance(total, torch.Tensor):
                tops.append(total.max().cpu())
        return cfg.lam * (cfg.gamma if cfg.online else 1.0) * float(torch.stack(tops).max())  # NaN stays NaN

    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        return self.logits(x, task_id if self.setting == "task" else None)

    def footprint(self) -> Footprint:
        heads = self.head.per_task()
        per_task = [module_bytes(h) for h in heads]
        if not self.config.online:  # each task's own Fisher and anchor
            per_task = [b + sum(t.numel() * t.element_size() for m in (self.fisher[i], self.anchor[i])
                                for t in m.values())  # type: ignore[attr-defined]
                        for i, b in enumerate(per_task)]
        kind = "online: one running Fisher + one anchor" if self.config.online else "one Fisher + one anchor per task"
        return Footprint(module_params(self), module_bytes(self), per_task,
                         f"network + heads fp32, plus {kind} over the shared parameters (fp32 buffers)")
