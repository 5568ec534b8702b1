"""Synaptic intelligence (Zenke, Poole & Ganguli, ICML 2017): a parameter's importance is its share
of the loss decrease along the training trajectory, accumulated online.

While task ``mu`` trains, every optimiser step adds ``omega_k += -g_k * delta_k`` (``after_step``),
``g_k`` the gradient of the *unregularised* loss at the step's start (the pathint code's
``unreg_grads``; here the full gradient minus the surrogate's own ``2 c Omega_k (theta_k -
theta~_k)``, which is exact) and ``delta_k`` the step's actual parameter change (momentum,
weight decay and all). At the task's end
``Omega_k += omega_k / (Delta_k^2 + xi)``, ``Delta_k`` the parameter's total change over the task,
and the anchor ``theta~`` moves to the current parameters. Later tasks add the surrogate
``c * sum_k Omega_k (theta_k - theta~_k)^2`` (no 1/2, the paper's Eq. 4 and the code's
``quadratic_regularizer``). Summed over the parameters, ``omega`` estimates the loss decrease of
the task (``info["omega_sum"]``).

Shared parameters only, as EWC: the backbone; class setting also the growing head.

Defaults: Zenke et al.'s permuted-MNIST values, ``c = 0.1``, ``xi = 0.1`` (ganguli-lab/pathint
``fig_permuted_mnist``: ``xi = 0.1``, c in [0, 0.01, 0.1, 1]; ``xi = 0.1`` is also van de Ven et
al.'s ``--epsilon`` default). Their split MNIST used ``c = 1``, ``xi = 1e-3`` (``fig_split_mnist``)
with Adam; under this library's SGD schedules those make the surrogate's curvature ``2 c Omega``
too stiff: ``Omega`` reaches ``omega / xi``, and on Split Fashion-MNIST (class setting, lr 0.05)
``lr * 2 c max Omega`` hit 214 at the second task and the run diverged to NaN, where ``c = 0.1,
xi = 0.1`` stays below 0.5 (``info["lr_c_omega_max"]``; SGD needs it below 2). van de Ven et al.
2020 tune ``c`` per scenario (split MNIST: 10 Task-IL, 5000 Class-IL, with Adam). The pathint
code clamps ``Omega`` at zero (``tf.nn.relu``) where the paper's formula does not: ``clamp_omega``.
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
from ..nn.heads import head_for
from .base import BackboneFactory, Footprint, Method, TaskMeta, TrainHParams, module_bytes, module_params
from .ewc import ParamBuffers
from .finetune import CLASS_INCREMENTAL_SCHEDULE


@dataclass
class SIConfig(TrainHParams):
    """Optimisation as ``finetune`` (the comparison's shared schedule); SI's own terms below."""

    c: float = 0.1  # Zenke et al. permuted MNIST (split MNIST with Adam: 1; module doc)
    xi: float = 0.1  # Zenke et al. permuted MNIST damping (pathint fig_permuted_mnist; split MNIST: 1e-3)
    clamp_omega: bool = False  # pathint code: Omega = relu(Omega + ...); the paper's Eq. 5 has no clamp

    def validate(self) -> None:
        super().validate()
        if self.c < 0 or self.xi <= 0:
            raise ConfigError(f"si needs c >= 0 and xi > 0, got c={self.c}, xi={self.xi}")


class SI(Method):
    name = "si"
    paper = "Continual Learning Through Synaptic Intelligence (Zenke, Poole & Ganguli, ICML 2017)"
    settings = ("task", "class")
    Config = SIConfig
    setting_defaults = {"class": CLASS_INCREMENTAL_SCHEDULE}

    def __init__(self, config: SIConfig, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)
        config.validate()
        self.backbone = make_backbone()
        dim = self.backbone.out_dim
        self.head = head_for(setting, dim)
        self.omega = ParamBuffers()  # Omega, the consolidated importance
        self.anchor = ParamBuffers()  # theta~, the parameters at the end of the last task
        self.register_buffer("consolidated", torch.zeros((), dtype=torch.long))
        # One task's path integral (transient: a checkpoint is written after consolidation).
        self._params: list[tuple[str, nn.Parameter]] = []
        self._start: dict[str, torch.Tensor] = {}
        self._path: dict[str, torch.Tensor] = {}
        self._grad: dict[str, torch.Tensor | None] = {}
        self._before: dict[str, torch.Tensor] = {}

    def begin_task(self, meta: TaskMeta) -> None:
        super().begin_task(meta)
        self.head.add(meta.num_classes)
        for name, p in self.shared():
            self.omega.ensure(name, p)
            self.anchor.ensure(name, p)

    def shared(self) -> list[tuple[str, nn.Parameter]]:
        """The parameters later tasks train: the backbone; class setting, the growing head too."""
        named = [("backbone." + n, p) for n, p in self.backbone.named_parameters()]
        if self.setting == "class":
            named += [("head." + n, p) for n, p in self.head.named_parameters()]
        return named

    def logits(self, x: torch.Tensor, task_id: int | None) -> torch.Tensor:
        feats = self.backbone(x)
        return self.head.logits(feats, task_id)

    # ------------------------------------------------------------------ the surrogate loss
    def penalty(self) -> torch.Tensor:
        """``c * sum_k Omega_k (theta_k - theta~_k)^2``."""
        total = next(self.backbone.parameters()).new_zeros(())
        for name, p in self.shared():
            total = total + (self.omega[name] * (p - self.anchor[name]).pow(2)).sum()
        return self.config.c * total

    # ------------------------------------------------------------------ the path integral
    def start_path(self) -> None:
        """Before a task trains: remember where each parameter starts, zero the running omega."""
        self._params = self.shared()
        self._start = {n: p.detach().clone() for n, p in self._params}
        self._path = {n: torch.zeros_like(p).detach() for n, p in self._params}

    @torch.no_grad()
    def record_gradient(self) -> None:
        """``after_backward``: the unregularised gradient and the parameters before the step."""
        regularised = int(self.consolidated) > 0 and self.config.c > 0
        for n, p in self._params:
            g = None if p.grad is None else p.grad.detach().clone()
            if g is not None and regularised:
                g -= 2 * self.config.c * self.omega[n] * (p - self.anchor[n])
            self._grad[n] = g
            self._before[n] = p.detach().clone()

    @torch.no_grad()
    def accumulate(self) -> None:
        """``after_step``: ``omega += -g * delta`` for the step just taken."""
        for n, p in self._params:
            g = self._grad.get(n)
            if g is not None:
                self._path[n] -= g * (p.detach() - self._before[n])

    @torch.no_grad()
    def consolidate(self) -> dict[str, float]:
        """End of task: ``Omega += omega / (Delta^2 + xi)``, anchor at the current parameters."""
        cfg: SIConfig = self.config
        total, positive, count, tops = 0.0, 0, 0, [torch.zeros(())]
        for n, p in self._params:
            delta = p.detach() - self._start[n]
            omega = self.omega[n]
            omega += self._path[n] / (delta.pow(2) + cfg.xi)
            if cfg.clamp_omega:
                omega.clamp_(min=0)
            self.anchor[n].copy_(p.detach())
            total += float(self._path[n].sum())
            positive += int((omega > 0).sum())
            count += omega.numel()
            tops.append(omega.max().cpu())
        self.consolidated += 1
        self._grad, self._before, self._path = {}, {}, {}
        top = float(torch.stack(tops).max())  # NaN (a diverged run) stays NaN
        # 2 c Omega is the surrogate's curvature: SGD oscillates on it when lr x that exceeds about 2
        return {"omega_sum": total, "omega_positive": positive / max(1, count), "omega_max": top,
                "lr_c_omega_max": 2 * cfg.lr * cfg.c * top}

    # ------------------------------------------------------------------ training
    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        cfg: SIConfig = self.config
        tid = task.id if self.setting == "task" else None
        current = self.head.trained(task.id)
        regularise = int(self.consolidated) > 0 and cfg.c > 0

        def loss(b: Batch) -> StepOutput:
            out = self.logits(b.x, tid)
            value = F.cross_entropy(out, b.y)
            return StepOutput(value + self.penalty() if regularise else value, out)

        self.start_path()
        ctx.fit(Phase("train", task.train, list(self.backbone.parameters()) + list(current.parameters()),
                      cfg.epochs, cfg.optim(), loss, cfg.batch_size, after_backward=self.record_gradient,
                      after_step=self.accumulate, modules=[self]))
        return self.consolidate()

    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        return self.logits(x, task_id if self.setting == "task" else None)

    def footprint(self) -> Footprint:
        heads = self.head.per_task()
        return Footprint(module_params(self), module_bytes(self), [module_bytes(h) for h in heads],
                         "network + heads fp32, plus Omega and the anchor over the shared parameters (fp32 "
                         "buffers); while a task trains, 4 more transient copies (start, omega, gradient, "
                         "pre-step values)")
