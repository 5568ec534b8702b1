"""LASEM: the transfer configuration of each new task found by EM (lasem.md 6), on HPS, TF or DF-CNN.

The new task's network is a superposition of all 2^L configurations over the same tensors (the
shared parts, one own conv and one set of transfer factors per layer, one FC head). Per minibatch:

- E-step (no dropout): L_c = *mean* over the batch of softmax(f_c(x))[y] (the final code; the
  workshop code's product underflows), gamma_c = pi_c L_c / (sum_c' pi_c' L_c' + 1e-30);
- M-step: one optimiser step on sum_c gamma_c CE_c (gamma constant, dropout per path), plus for
  TF/DF-CNN each layer's factor penalty weighted by the posterior mass of the configurations
  that share it; the shared core/KB gets only the CE gradient;
- prior pi <- running mean of every posterior so far in this task (``count_prior``: normalised
  counts of each minibatch's argmax, from 1; ``reset_prior``: restart each epoch).

While training, the task is evaluated with argmax pi. At its end c* = argmax pi (first index on
ties; 0 = all shared) is committed: shared layers c* uses keep their updated values (older
tasks sharing them see the change), every other shared layer is rolled back bit for bit to its
value before the task (or, when no task ever committed it, re-initialised when the next task
starts), and the unchosen per-task parts are dropped. The conv stack of all configurations
is evaluated as a prefix tree (``TransferNet.tree``), once for both steps since dropout only
follows the conv stack.

LASEMG (``lasemg-*``): layers in consecutive groups (``--set groups=[2,2]``) switch together,
2^#groups configurations; the EM is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Any, ClassVar

import torch
import torch.nn.functional as F

from ..data.scenario import Task
from ..engine.loop import StepOutput, TrainContext
from ..errors import ConfigError
from ..nn.transfer import Config, config_of, config_str
from .base import BackboneFactory
from .lasem_common import LasemHParams, fit_lasem_phase
from .selective import DFTerms, SearchedTransfer, TFTerms


@dataclass
class LasemConfig(LasemHParams):
    test_type: int | None = None  # the README's --test_type: only % 5 matters here (TF aux weight / DF-CNN L2)
    reset_prior: bool = False  # lasem.md 6 --reset_prior: pi restarts uniform every epoch (off in the paper)
    count_prior: bool = False  # lasem.md 6 --em_cnt_prior: pi = counts of minibatch argmax posteriors (from 1)
    groups: list[int] | None = None  # LASEMG only: consecutive layer-group sizes; None: the code's default


@dataclass
class LasemTFConfig(LasemConfig, TFTerms):
    pass


@dataclass
class LasemDFCNNConfig(LasemConfig, DFTerms):
    pass


def posterior(prior: torch.Tensor, likelihood: torch.Tensor) -> torch.Tensor:
    """gamma_c = pi_c L_c / (sum_c' pi_c' L_c' + 1e-30) (``define_eval`` of the EM frame)."""
    joint = prior * likelihood
    return joint / (joint.sum() + 1e-30)


def mean_true_class_probability(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logits (C, N, K) -> (C,): the final code's likelihood, mean_i softmax(f_c(x_i))[y_i]."""
    probs = logits.softmax(-1)
    return probs.gather(2, y.view(1, -1, 1).expand(probs.shape[0], -1, 1)).squeeze(2).mean(1)


class LASEM(SearchedTransfer):
    Config = LasemConfig
    default_groups: ClassVar[dict[int, list[int]] | None] = None  # None: one layer per group (plain LASEM)

    def __init__(self, config: LasemConfig, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)
        self.groups = self.resolve_groups()
        C = 2 ** len(self.groups)
        self.register_buffer("prior", torch.full((C,), 1.0 / C))
        self.register_buffer("post_sum", torch.zeros(C))
        self.register_buffer("post_count", torch.zeros(()))
        self._epoch_started = False

    def resolve_groups(self) -> list[int]:
        L = self.spec.num_layers
        if self.default_groups is None:
            if self.config.groups:
                raise ConfigError(f"{self.name} searches every layer on its own; layer groups are lasemg-*'s option")
            return [1] * L
        groups = self.config.groups or self.default_groups.get(L)
        if groups is None:
            raise ConfigError(f"{self.name}: no default grouping for {L} conv layers; pass --set groups=[...] summing to {L}")
        if sum(groups) != L or min(groups) < 1:
            raise ConfigError(f"groups {groups} must be positive sizes summing to the {L} conv layers")
        return list(groups)

    def current_config(self) -> Config:
        return config_of(int(self.prior.argmax()), self.groups)  # argmax pi, ties to the first index

    # ------------------------------------------------------------ EM
    def reset_prior(self) -> None:
        C = self.prior.numel()
        self.prior.fill_(1.0 / C)
        self.post_sum.fill_(1.0 if self.config.count_prior else 0.0)
        self.post_count.zero_()

    def update_prior(self, gamma: torch.Tensor) -> None:
        if self.config.count_prior:
            self.post_sum[int(gamma.argmax())] += 1.0
            self.prior.copy_(self.post_sum / self.post_sum.sum())
        else:
            self.post_sum += gamma
            self.post_count += 1
            self.prior.copy_(self.post_sum / self.post_count)

    def layer_mass(self, gamma: torch.Tensor) -> torch.Tensor:
        """(L,): sum of gamma_c over the configurations c that share each layer."""
        shares = getattr(self, "_shares", None)
        if shares is None or shares.device != gamma.device or shares.dtype != gamma.dtype:
            rows = [config_of(i, self.groups) for i in range(gamma.numel())]
            shares = self._shares = torch.tensor(rows, dtype=gamma.dtype, device=gamma.device)
        return gamma @ shares

    def em_loss(self, x: torch.Tensor, y: torch.Tensor, t: int,
                over_batch: Callable[[torch.Tensor], torch.Tensor] = lambda v: v) -> tuple[StepOutput, torch.Tensor]:
        """E-step, prior update and the M-step loss for one minibatch; returns (step output, gamma).
        ``over_batch``: a mean over a rank's shard -> the mean over the whole batch (``ctx.batch_mean``),
        so every rank takes the same posterior under torchrun."""
        if self._epoch_started and self.config.reset_prior:
            self.reset_prior()
        self._epoch_started = False
        feats = self.net.tree(x, t, self.groups)  # (C, N, D)
        C, N = feats.shape[:2]
        with torch.no_grad():
            likelihood = over_batch(mean_true_class_probability(
                self.net.head(t, feats.flatten(0, 1), dropout=False).view(C, N, -1), y))
            gamma = posterior(self.prior, likelihood)
            self.update_prior(gamma)
        logits = self.net.head(t, feats.flatten(0, 1)).view(C, N, -1)
        ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(C), reduction="none").view(C, N).mean(1)
        loss = (gamma * ce).sum()
        if self.kind != "hps":
            loss = loss + self.regulariser(self.net.penalties(t), self.layer_mass(gamma))
        best = logits.index_select(0, self.prior.argmax().view(1))[0]  # no device sync per step
        return StepOutput(loss, best.detach()), gamma

    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        t = task.id
        self.reset_prior()
        self.snapshot()
        history: list[list[float]] = []

        def after_epoch(epoch: int) -> None:
            history.append([round(v, 6) for v in self.prior.tolist()])
            self._epoch_started = True

        params = self.net.shared_parameters() + self.net.task_parameters(t)
        info = fit_lasem_phase(self, ctx, task, params, lambda b: self.em_loss(b.x, b.y, t, lambda v: ctx.batch_mean(v, b))[0],
                               lambda x: self.predict(x, t), self.config, after_epoch)
        index = int(self.prior.argmax())
        prior = [round(v, 6) for v in self.prior.tolist()]
        cfg = self.commit(t)
        return {"config": config_str(cfg), "config_index": index, "groups": self.groups, "prior": prior,
                "prior_history": history, "owners": self.owners(t, cfg), **info}


class LASEMHPS(LASEM):
    name = "lasem-hps"
    paper = "Lee, Behpour, Eaton, Sharing Less is More (ICML 2021): LASEM on hard parameter sharing"
    kind = "hps"
    Config = LasemConfig


class LASEMTF(LASEM):
    name = "lasem-tf"
    paper = "Lee, Behpour, Eaton, Sharing Less is More (ICML 2021): LASEM on tensor factorisation"
    kind = "tf"
    Config = LasemTFConfig


class LASEMDFCNN(LASEM):
    name = "lasem-dfcnn"
    paper = "Lee, Behpour, Eaton, Sharing Less is More (ICML 2021): LASEM on DF-CNN"
    kind = "dfcnn"
    Config = LasemDFCNNConfig


# ``layer_group_config`` of the code (lasem.md 6): 4 -> singletons, 9 -> [3,3,3], 17 -> [5,4,4,4]
# (test_type < 5); 6 layers raise there, [2,2,2] is this library's default.
GROUPS = {4: [1, 1, 1, 1], 6: [2, 2, 2], 9: [3, 3, 3], 17: [5, 4, 4, 4]}


class LASEMGHPS(LASEMHPS):
    name = "lasemg-hps"
    paper = "LASEM with layer groups (the code's LASEM_GROUP_HPS)"
    default_groups = GROUPS


class LASEMGTF(LASEMTF):
    name = "lasemg-tf"
    paper = "LASEM with layer groups (the code's LASEM_GROUP_TF)"
    default_groups = GROUPS


class LASEMGDFCNN(LASEMDFCNN):
    name = "lasemg-dfcnn"
    paper = "LASEM with layer groups (the code's LASEM_GROUP_DFCNN)"
    default_groups = GROUPS
