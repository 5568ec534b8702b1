"""APD: additive parameter decomposition (Yoon et al. ICLR 2020), as LASEM configures it, and APD proper's options.

LASEM's configuration (``cnn_baseline_model.py::LL_CNN_APD``, lasem.md 8): every conv layer is
W_t = sigma * sigmoid(M_t) + tau_t (``nn/apd.py``) with sigma and the conv bias shared by all tasks,
M_t and tau_t task t's own, the FC layers task t's own. Training task t updates sigma, the bias,
M_t, tau_t and t's FC layers on

    CE + lambda1 * mean_l mean|tau_t,l| + lambda2 * mean_p (1/2 ||p - p_prev||^2 / numel(p))

where p runs over the shared kernels and biases and p_prev is p at the end of the previous task
(no drift term on the first task). Older tasks' masks and taus are frozen, so they drift only
through sigma and the bias, as far as the drift term lets them.

APD proper (``--set variant=apd`` turns all three on; each has its own key):

- ``retroactive``: the code's approximation loss. Older tasks' taus train too, with
  retro_lambda * sum_{j<t} sum_l 1/2 ||W_j,l - W*_j,l||^2 (W*_j,l: task j's kernel when task t
  began) and the L1 term on each of them; their masks stay fixed;
- ``consolidate_every``: hierarchical knowledge consolidation after every s-th task (k-means
  over the taus, locally shared kernels for what a group agrees on, ``nn/apd.consolidate``);
- ``mask_shape=channel``: one mask logit per output filter, as the APD code.

Not built: APD's magnitude pruning of tau at inference (LASEM defines ``l1_pruning`` and never
calls it), its order-robustness experiments, and the per-task biases of the APD code (LASEM shares
the bias; the drift term then covers it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.scenario import Task
from ..engine.loop import Batch, StepOutput, TrainContext
from ..errors import ConfigError
from ..nn.apd import MASK_SHAPES, APDLayer, consolidate, kmeans
from ..nn.lasem_cnn import FCHead, LasemCNN
from .base import BackboneFactory, Footprint, Method, TaskMeta, check_choice
from .lasem_common import TOY_DEFAULTS, LasemHParams, fit_lasem_phase

APD_PROPER = {"retroactive": True, "consolidate_every": 5, "mask_shape": "channel"}


@dataclass
class APDConfig(LasemHParams):
    lambda1: float = 4e-4  # lasem.md 8 (utils_env_cl.py lambda1): L1 on tau; the APD code's l1_hyp is also 4e-4
    lambda2: float = 100.0  # lasem.md 8 (lambda2): drift of the shared kernels and biases; the APD code's approx_hyp is 100
    variant: str = "lasem"  # lasem: LASEM's configuration; apd: retroactive + consolidate_every 5 + mask_shape channel
    mask_shape: str = "kernel"  # lasem.md 8: kernel-shaped M_t (new_APD_conv_layer); channel: per output filter (APD code)
    retroactive: bool = False  # APD eq. 3 (cifar100_apd.py approx_loss): older taus train, held to their kernels
    retro_lambda: float = 100.0  # APD code: approx_hyp 100 on tf.nn.l2_loss (1/2 sum of squares) per older task and layer
    consolidate_every: int = 0  # APD 3.3: k-means consolidation after every s-th task (the code's clustering_iter 5); 0 off
    centroids: int = 2  # APD code k_centroides: k = centroids * (t + 1) / consolidate_every clusters at task t
    e_gap: float = 1e-2  # APD code e_gap_hyp (cifar100_apd_bash.py): elements a group agrees on to within this are shared
    kmeans_iters: int = 100  # APD code: 100 k-means updates per consolidation

    def validate(self) -> None:
        super().validate()
        check_choice("variant", self.variant, ("lasem", "apd"))
        check_choice("mask_shape", self.mask_shape, MASK_SHAPES)
        if self.consolidate_every < 0 or self.centroids < 1 or self.kmeans_iters < 1 or self.e_gap < 0:
            raise ConfigError("consolidate_every >= 0, centroids >= 1, kmeans_iters >= 1 and e_gap >= 0 are required")


class APD(Method):
    name = "apd"
    paper = "Yoon et al., Scalable and Order-robust Continual Learning with Additive Parameter Decomposition (ICLR 2020), as LASEM configures it"
    settings = ("task",)
    Config = APDConfig
    variant_defaults = {"variant": {"apd": APD_PROPER}}
    val_fraction = 0.15  # the peak accuracy's validation split, as every LASEM-family method
    benchmark_defaults = TOY_DEFAULTS
    guarantees_unforgetting = False  # older tasks drift through sigma and the bias

    def __init__(self, config: APDConfig, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)
        probe = make_backbone()
        if not isinstance(probe, LasemCNN):
            raise ConfigError(f"method {self.name} builds the LASEM conv nets: pass --backbone lasem_cnn")
        self.spec = s = probe.spec
        self.layers = nn.ModuleList(APDLayer(ci, co, k, p, config.mask_shape)
                                    for (ci, co), k, p in zip(s.in_out, s.kernels, s.pools))
        self.heads = nn.ModuleDict()
        self.register_buffer("global_epoch", torch.zeros((), dtype=torch.long))
        self.consolidated = (0, 0)  # (tasks, groups) of the latest consolidation, for rebuild

    # ------------------------------------------------------------ structure
    def begin_task(self, meta: TaskMeta) -> None:
        super().begin_task(meta)
        for layer in self.layers:
            layer.add_task(meta.id)
        self.heads[str(meta.id)] = FCHead(self.spec.flat_dim, self.spec.hidden, meta.num_classes, self.spec.dropout)

    def extra_structure(self) -> dict[str, Any]:
        return {"consolidated": list(self.consolidated)}

    def rebuild_extra(self, structure: dict[str, Any]) -> None:
        tasks, groups = structure.get("consolidated", [0, 0])
        self.consolidated = (tasks, groups)
        if tasks:
            for layer in self.layers:
                layer.resize_consolidation(tasks, groups)

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.layers for p in (layer.sigma, layer.bias)]

    # ------------------------------------------------------------ forward and losses
    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        assert task_id is not None
        for layer in self.layers:
            x = layer(x, task_id)
        return self.heads[str(task_id)](x.flatten(1))

    def tau_penalty(self, t: int) -> torch.Tensor:
        """mean over layers of mean|tau_t,l| (the code's l1_loss per layer, averaged)."""
        return torch.stack([layer.tau[str(t)].abs().mean() for layer in self.layers]).mean()

    def drift_penalty(self, prev: list[torch.Tensor]) -> torch.Tensor:
        """mean over the shared tensors p of 1/2 ||p - p_prev||^2 / numel(p)."""
        return torch.stack([0.5 * (p - q).square().sum() / p.numel() for p, q in zip(self.shared_parameters(), prev)]).mean()

    def retro_penalty(self, targets: list[list[torch.Tensor]]) -> torch.Tensor:
        """sum over older tasks j and layers l of 1/2 ||W_j,l - W*_j,l||^2."""
        return torch.stack([0.5 * (layer.weight(j) - w).square().sum()
                            for j, per_layer in enumerate(targets) for layer, w in zip(self.layers, per_layer)]).sum()

    def loss(self, b: Batch, t: int, prev: list[torch.Tensor] | None, targets: list[list[torch.Tensor]] | None) -> StepOutput:
        cfg: APDConfig = self.config
        out = self.predict(b.x, t)
        loss = F.cross_entropy(out, b.y) + cfg.lambda1 * self.tau_penalty(t)
        if prev is not None:
            loss = loss + cfg.lambda2 * self.drift_penalty(prev)
        if targets:
            loss = loss + cfg.retro_lambda * self.retro_penalty(targets)
            loss = loss + cfg.lambda1 * sum(self.tau_penalty(j) for j in range(len(targets)))
        return StepOutput(loss, out)

    # ------------------------------------------------------------ training
    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        cfg: APDConfig = self.config
        t = task.id
        prev = [p.detach().clone() for p in self.shared_parameters()] if t > 0 else None
        targets = None
        if cfg.retroactive and t > 0:
            with torch.no_grad():
                targets = [[layer.weight(j).detach().clone() for layer in self.layers] for j in range(t)]
        params = self.shared_parameters() + [p for layer in self.layers for p in (layer.mask[str(t)], layer.tau[str(t)])]
        params += list(self.heads[str(t)].parameters())
        if targets:
            params += [layer.tau[str(j)] for layer in self.layers for j in range(t)]
        info = fit_lasem_phase(self, ctx, task, params, lambda b: self.loss(b, t, prev, targets),
                               lambda x: self.predict(x, t), cfg)
        with torch.no_grad():
            info["tau_l1"] = [round(layer.tau[str(t)].abs().mean().item(), 6) for layer in self.layers]
            info["drift"] = None if prev is None else round(self.drift_penalty(prev).item(), 8)
            info["retro"] = None if not targets else round(self.retro_penalty(targets).item(), 8)
        if cfg.consolidate_every and (t + 1) % cfg.consolidate_every == 0 and t > 0:
            info["consolidation"] = self.consolidate(t)
        return info

    @torch.no_grad()
    def consolidate(self, t: int) -> dict[str, Any]:
        """Hierarchical knowledge consolidation over tasks 0..t, layer by layer (seeded by t: resumable)."""
        cfg: APDConfig = self.config
        k = max(1, min(t + 1, int(cfg.centroids * (t + 1) / cfg.consolidate_every)))
        gen = torch.Generator().manual_seed(t)
        groups, shared = [], []
        for layer in self.layers:
            full = torch.stack([layer.full_tau(j) for j in range(t + 1)])
            assign = kmeans(full.flatten(1), k, cfg.kmeans_iters, gen)
            local, residual = consolidate(full, assign, k, cfg.e_gap)
            layer.resize_consolidation(t + 1, k)
            layer.local.copy_(local)
            layer.group.copy_(assign)
            for j in range(t + 1):
                layer.tau[str(j)].copy_(residual[j])
            groups.append(assign.tolist())
            shared.append(round((local != 0).float().mean().item(), 6))
        self.consolidated = (t + 1, k)
        return {"groups": groups, "k": k, "local_fraction": shared}

    # ------------------------------------------------------------ reporting
    def task_summary(self, info: dict[str, Any]) -> str:
        peak = (info.get("peak") or {}).get("test_accuracy")
        tau = info.get("tau_l1") or []
        text = f"mean|tau| {sum(tau) / max(1, len(tau)):.4f}" + (f", peak {peak:.3f}" if peak is not None else "")
        if info.get("consolidation"):
            text += f", consolidated into {info['consolidation']['k']} groups"
        return text

    def footprint(self) -> Footprint:
        """Shared kernels and biases once, each task's masks, taus and FC layers, the locally shared kernels (fp32, dense)."""
        shared = sum(p.numel() for p in self.shared_parameters()) + sum(layer.local.numel() for layer in self.layers)
        per_task = [sum(layer.mask[str(t)].numel() + layer.tau[str(t)].numel() for layer in self.layers)
                    + sum(p.numel() for p in self.heads[str(t)].parameters()) for t in range(len(self.tasks))]
        return Footprint(shared + sum(per_task), 4 * (shared + sum(per_task)), [4 * n for n in per_task],
                         "apd: sigma and biases once, per-task masks, taus and FC, local kernels; fp32, tau stored dense")
