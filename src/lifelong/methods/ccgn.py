"""CCGN: conditional channel gated networks (Abati et al. CVPR 2020), as LASEM configures it, and CCGN proper.

LASEM's configuration (``cnn_baseline_model.py::LL_CNN_ChannelGatedNet``, lasem.md 8): the conv
layers are shared by all tasks and stay trainable (no kernel is ever frozen); each task has, per
layer, a gating MLP (flattened layer input -> 256, ReLU -> C_out) whose softmax(logits / 0.1)
multiplies the layer's activated, pooled output channel-wise (``nn/gated.py``), and its own FC
layers. Training task t updates the convs, t's gating modules and t's FC layers on

    CE + 100 * mean_l mean|g_l|

**That sparsity term is constant.** Softmax gates are positive and sum to 1 over a layer's C_l
channels, so mean|g_l| = 1/C_l whatever the network does: the term has no gradient and no effect
(lasem.md 9.11). ``info["sparsity_term_constant"]`` records it. The fix, ``--set gate=sigmoid``:
an independent gate per channel, so the term counts open channels; it comes with CCGN's weight
0.5 (at the code's 100 the term outweighs the CE and closes every gate).

CCGN proper, ``--set gate=gumbel`` (its defaults: temperature 2/3, gating input by global average
pooling, 16 hidden units, sparsity weight 0.5, kernel freezing on): binary gates (straight-through
Gumbel in training, logit > 0 at evaluation) and, after each task, the kernels whose gate fired on
some of the task's validation images are frozen for every later task (their gradients are zeroed)
while the kernels no task has frozen are re-initialised when the next task begins. The task's own
validation outputs are then unchanged by later tasks. CCGN's task classifier (class-incremental)
is not built: this is the task-incremental setting, the task id is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..data.scenario import Task
from ..engine.loop import Batch, StepOutput, TrainContext
from ..errors import ConfigError
from ..nn.gated import GATE_INPUTS, GATES, GatedNet
from ..nn.lasem_cnn import LasemCNN
from .base import BackboneFactory, Footprint, Method, TaskMeta, check_choice
from .lasem_common import TOY_DEFAULTS, LasemHParams, PeakTracker
from .lasem_stage import fit_stage, stage_info

# CCGN (Abati et al. 2020, sec. 3 and 4): Gumbel temperature 2/3, gating MLP on the pooled input
# with 16 hidden units, lambda_s 0.5, relevant kernels frozen after each task.
CCGN_PROPER = {"temperature": 2 / 3, "gate_input": "pool", "gate_hidden": 16, "sparsity_weight": 0.5, "freeze": True}


@dataclass
class CCGNConfig(LasemHParams):
    gate: str = "softmax"  # lasem.md 8: softmax over channels; sigmoid: per-channel gates (the fix); gumbel: CCGN's binary gates
    temperature: float = 0.1  # lasem.md 8 (utils_env_cl.py gating_temperature 1/10); gumbel: 2/3 (CCGN)
    gate_input: str = "flatten"  # lasem.md 8: the flattened layer input; pool: global average pooling (CCGN)
    gate_hidden: int = 256  # lasem.md 8 (gating_module_size [256]); CCGN: 16
    sparsity_weight: float = 100.0  # lasem.md 8 (sparsity_loss_weight); CCGN lambda_s 0.5
    freeze: bool = False  # CCGN: freeze the kernels whose gates fire on the task's validation set; LASEM: never
    freeze_threshold: float = 0.0  # a kernel is relevant when its gate's firing rate on validation exceeds this (CCGN: > 0)

    def validate(self) -> None:
        super().validate()
        check_choice("gate", self.gate, GATES)
        check_choice("gate_input", self.gate_input, GATE_INPUTS)
        if self.temperature <= 0 or self.gate_hidden < 1 or self.sparsity_weight < 0:
            raise ConfigError("temperature > 0, gate_hidden >= 1 and sparsity_weight >= 0 are required")
        if self.freeze and self.gate != "gumbel":
            raise ConfigError("freeze needs binary gates (gate=gumbel): a soft gate never switches a kernel off")


class CCGN(Method):
    name = "ccgn"
    paper = "Abati et al., Conditional Channel Gated Networks for Task-Aware Continual Learning (CVPR 2020), as LASEM configures it"
    settings = ("task",)
    Config = CCGNConfig
    variant_defaults = {"gate": {"gumbel": CCGN_PROPER, "sigmoid": {"sparsity_weight": 0.5}}}
    val_fraction = 0.15  # the peak accuracy's (and CCGN's relevance) validation split
    benchmark_defaults = TOY_DEFAULTS
    guarantees_unforgetting = False  # LASEM form: the shared convs drift; gumbel: only unfrozen kernels may fire anew

    def __init__(self, config: CCGNConfig, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)
        probe = make_backbone()
        if not isinstance(probe, LasemCNN):
            raise ConfigError(f"method {self.name} builds the LASEM conv nets: pass --backbone lasem_cnn")
        self.net = GatedNet(probe.spec, config.gate_input, config.gate_hidden)
        self.register_buffer("global_epoch", torch.zeros((), dtype=torch.long))

    def begin_task(self, meta: TaskMeta) -> None:
        super().begin_task(meta)
        self.net.add_task(meta.id, meta.num_classes)

    def forward_gates(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.net(x, t, self.config.gate, self.config.temperature)

    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        assert task_id is not None
        return self.forward_gates(x, task_id)[0]

    def sparsity(self, gates: list[torch.Tensor]) -> torch.Tensor:
        """mean over layers of mean|g_l| (the code's l1_loss of each layer's gates, averaged)."""
        return torch.stack([g.abs().mean() for g in gates]).mean()

    def loss(self, b: Batch, t: int) -> StepOutput:
        out, gates = self.forward_gates(b.x, t)
        return StepOutput(F.cross_entropy(out, b.y) + self.config.sparsity_weight * self.sparsity(gates), out)

    @torch.no_grad()
    def gate_rates(self, t: int, task: Task, ctx: TrainContext) -> list[torch.Tensor]:
        """Per layer (C_l,): mean gate of each channel over the task's validation images (training images
        when it has none), evaluation mode; for gumbel gates this is each kernel's firing rate."""
        data = task.val if len(task.val) else task.train
        self.eval()
        sums: list[torch.Tensor] | None = None
        n = 0
        for b in ctx.iterate(data, 256, train=False, mean=task.mean, std=task.std):
            gates = self.forward_gates(b.x, t)[1]
            sums = [g.sum(0) for g in gates] if sums is None else [s + g.sum(0) for s, g in zip(sums, gates)]
            n += b.x.shape[0]
        assert sums is not None
        return [(s / max(1, n)).cpu() for s in sums]

    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        cfg: CCGNConfig = self.config
        t = task.id
        if cfg.freeze and t > 0:
            for conv in self.net.convs:
                conv.reinit_unfrozen()
        params = list(self.net.convs.parameters()) + self.net.task_parameters(t)
        tracker = PeakTracker()
        fit_stage(self, ctx, task, params, lambda b: self.loss(b, t), lambda x: self.predict(x, t), cfg, tracker=tracker,
                  after_backward=(lambda: [c.mask_frozen_grads() for c in self.net.convs]) if cfg.freeze else None)
        info = stage_info(self, tracker, cfg)
        rates = self.gate_rates(t, task, ctx)
        info["gate_mean"] = [round(r.mean().item(), 6) for r in rates]
        info["sparsity_term_constant"] = cfg.gate == "softmax"  # softmax gates sum to 1: mean|g| = 1 / C_l
        if cfg.gate != "softmax":
            info["open"] = [int((r > (cfg.freeze_threshold if cfg.gate == "gumbel" else 0.5)).sum()) for r in rates]
        if cfg.freeze:
            self.freeze_relevant(rates)
            info["frozen"] = [int(c.frozen.sum()) for c in self.net.convs]
        return info

    @torch.no_grad()
    def freeze_relevant(self, rates: list[torch.Tensor]) -> None:
        """Freeze, for every later task, each kernel whose gate fired on more than ``freeze_threshold`` of the images."""
        for conv, r in zip(self.net.convs, rates):
            conv.frozen |= (r > self.config.freeze_threshold).to(conv.frozen.device)

    def task_summary(self, info: dict[str, Any]) -> str:
        peak = (info.get("peak") or {}).get("test_accuracy")
        parts = [f"open {'/'.join(map(str, info['open']))}"] if info.get("open") else []
        parts += [f"frozen {'/'.join(map(str, info['frozen']))}"] if info.get("frozen") else []
        parts += [f"peak {peak:.3f}"] if peak is not None else []
        return ", ".join(parts)

    def footprint(self) -> Footprint:
        """Shared convs once, each task's gating modules and FC layers (fp32)."""
        shared = sum(p.numel() for p in self.net.convs.parameters())
        per_task = [sum(p.numel() for p in self.net.task_parameters(t)) for t in range(len(self.tasks))]
        return Footprint(shared + sum(per_task), 4 * (shared + sum(per_task)), [4 * n for n in per_task],
                         f"ccgn ({self.config.gate} gates): shared convs once, per-task gating MLPs and FC; fp32")
