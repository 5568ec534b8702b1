"""DARTS selective transfer (``darts-hps``, ``darts-dfcnn``), the LASEM paper's baseline (lasem.md 8).

The LASEM code's ``DARTS_HPS`` / ``DARTS_DFCNN`` (``cnn_darts_model.py``, ``new_darts_conv_layer``):
while task t trains, every conv layer l runs both branches, the task's own conv and the transfer
conv (HPS's shared conv, DF-CNN's KB-generated conv), each + bias and ReLU, and mixes them with
softmax(alpha_l), alpha_l in R^2 (index 0 = task-specific, index 1 = shared, started at 0); the
max-pool follows the mix. Two updates, each with TF1 RMSProp at the same lr and decay:

- weights (shared part, the task's own convs / DF-CNN factors, its FC head) on CE of the mixed
  network over the training data (DF-CNN adds its L2 terms on every layer's KB and factors);
- architecture (alpha only) on CE of the mixed network, first order (``--darts_approx_order 1``,
  the default), over ``arch_data``: ``train`` (the code: the same training minibatches) or
  ``val`` (DARTS proper: the task's held-out validation split).

Both use dropout 0.5. While t trains it is served (and its peak measured) with the discretised
network argmax_l alpha_l (ties to task-specific, as ``np.argmax``); at its end that configuration
is committed with LASEM's commit/rollback (``SearchedTransfer.commit``): shared layers it does
not use are restored bit for bit, the unchosen per-task parts dropped.

Through the shared loop: the weight epoch is the main phase and the architecture epoch its
``interleave`` phase (one epoch after each weight epoch; each phase back-propagates only into
its own parameters). The code alternates per minibatch (alpha step, then weight step on the same
batch); here the alternation is per epoch (docs/methods/lasem.md "DARTS").
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
from ..nn.lasem_cnn import conv_same, pool_same
from ..nn.transfer import Config, config_str
from .base import BackboneFactory, TaskMeta, check_choice
from .lasem_common import LasemHParams, fit_lasem_phase
from .selective import DFTerms, SearchedTransfer


@dataclass
class DartsConfig(LasemHParams):
    test_type: int | None = None  # the README's --test_type: only % 5 matters here (DF-CNN's L2 scales)
    arch_data: str = "train"  # lasem.md 8: the code steps alpha on the training minibatches; "val": the held-out split

    def validate(self) -> None:
        super().validate()
        check_choice("arch_data", self.arch_data, ("train", "val"))


@dataclass
class DartsDFCNNConfig(DartsConfig, DFTerms):
    pass


class DARTS(SearchedTransfer):
    Config = DartsConfig

    def __init__(self, config: DartsConfig, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)
        self.alpha = nn.ParameterDict()  # per task: (L, 2), column 0 task-specific, column 1 shared

    def begin_task(self, meta: TaskMeta) -> None:
        super().begin_task(meta)
        self.alpha[str(meta.id)] = nn.Parameter(torch.zeros(self.net.num_layers, 2))  # the code's init: 0

    def current_config(self) -> Config:
        """argmax_l alpha_l of the task being trained (first index on ties: task-specific)."""
        return tuple(bool(c) for c in (self.alpha[str(len(self.configs))].argmax(1) == 1).tolist())

    def mix(self, t: int) -> torch.Tensor:
        return self.alpha[str(t)].softmax(1)

    def mixed(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """Logits of the continuous network: per layer softmax(alpha_l) . (ReLU(own conv), ReLU(transfer conv)), then pool."""
        w = self.mix(t)
        for l, layer in enumerate(self.net.layers):
            own = F.relu(conv_same(x, *layer.weight(t, False)))
            shared = F.relu(conv_same(x, *layer.weight(t, True)))
            x = pool_same(w[l, 0] * own + w[l, 1] * shared, layer.pool)
        return self.net.head(t, x.flatten(1))

    def weight_loss(self, b: Batch, t: int) -> StepOutput:
        out = self.mixed(b.x, t)
        loss = F.cross_entropy(out, b.y)
        if self.kind != "hps":  # DF-CNN: L2 on every layer's KB and factors (all are in the graph)
            loss = loss + self.regulariser(self.net.penalties(t), torch.ones(self.net.num_layers, device=out.device))
        return StepOutput(loss, out)

    def arch_loss(self, b: Batch, t: int) -> StepOutput:
        return StepOutput(F.cross_entropy(self.mixed(b.x, t), b.y))  # the code: selection grads of the CE only

    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        t, cfg = task.id, self.config
        arch_set = task.train if cfg.arch_data == "train" else task.val
        if len(arch_set) == 0:
            raise ConfigError(f"{self.name}: arch_data=val needs a validation split; task {t + 1} has none "
                              f"(set benchmark.val_fraction above 0)")
        self.snapshot()
        history: list[list[float]] = []

        def after_epoch(epoch: int) -> None:
            history.append([round(v, 6) for v in self.mix(t)[:, 1].tolist()])

        alpha = {"params": [self.alpha[str(t)]]}
        arch = Phase("arch", arch_set, [alpha], cfg.epochs, cfg.optim(), lambda b: self.arch_loss(b, t), cfg.batch_size,
                     modules=[self], augment=False, grad_only_params=True)
        weights = self.net.shared_parameters() + self.net.task_parameters(t)
        info = fit_lasem_phase(self, ctx, task, weights, lambda b: self.weight_loss(b, t), lambda x: self.predict(x, t),
                               cfg, after_epoch, interleave=arch, grad_only_params=True)
        raw = self.alpha[str(t)].tolist()  # unrounded: the committed argmax must be readable from it
        share = [round(v, 6) for v in self.mix(t)[:, 1].tolist()]
        chosen = self.commit(t)
        return {"config": config_str(chosen), "owners": self.owners(t, chosen), "alpha": raw, "share_weight": share,
                "share_weight_history": history, "arch_data": cfg.arch_data, **info}

    def task_summary(self, info: dict[str, Any]) -> str:
        text = super().task_summary(info)
        share = info.get("share_weight")
        return text if share is None else text.replace(
            f"config {info.get('config')}", f"config {info.get('config')} (share {' '.join(f'{w:.2f}' for w in share)})", 1)


class DARTSHPS(DARTS):
    name = "darts-hps"
    paper = "DARTS (Liu et al. ICLR 2019) selective layer transfer on HPS, LASEM's DARTS_HPS baseline (Lee et al. ICML 2021)"
    kind = "hps"
    Config = DartsConfig


class DARTSDFCNN(DARTS):
    name = "darts-dfcnn"
    paper = "DARTS selective layer transfer on DF-CNN, LASEM's DARTS_DFCNN baseline (Lee et al. ICML 2021)"
    kind = "dfcnn"
    Config = DartsDFCNNConfig
