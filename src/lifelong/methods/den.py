"""DEN: dynamically expandable networks (Yoon et al., ICLR 2018) with the values the LASEM code configures.

The LASEM code's DEN (``cnn_den_model.py``) was never released; this follows the DEN paper and
its public code (``jaehong31/DEN``, ``DEN.py``) on the LASEM conv nets (``nn/den.py``: the
channels of the conv layers and the units of the hidden FC layers are DEN's units). Per task t:

1. t = 1, sparse training: everything trains on CE + l2/2 ||W||^2, with a proximal L1 step
   (soft threshold lr * l1) after every update.
2. t > 1, selective retraining: (a) the new head alone, with the L1 step, for a tenth of the
   epochs (the code's ``early_training``); (b) ``bfs_select`` from the head through non-zero
   weights; (c) only the reached subnetwork (rows of reached units, columns of reached units
   below) trains, on CE + l2/2 ||W_S||^2 + reg/2 ||W_S - W_S^{t-1}||^2 with the L1 step.
3. Dynamic expansion, when the training CE (evaluation mode) is still above ``loss_threshold``:
   k units are appended to every hidden layer (connected to all units below, feeding all units
   above and the new head) and only the weights touching them train (CE + l2, L1 step, and a
   group-lasso proximal step on each new unit's incoming weights, threshold lr * gl); then every
   new unit that ended up (nearly) without incoming weights is removed.
4. Split/duplication: an old unit whose incoming weights from old units moved more than
   ``split_threshold`` (L2) since task t-1 is duplicated: the copy, born at t, keeps the new
   weights and the original is restored exactly to its t-1 values; at most k per layer, the
   largest drifts first. Then the units born at t (and the head) retrain.

Timestamps: task t serves with the units that existed when it finished, ``stamps[t]``.
Everything that changes a task's served function after it finished is selective retraining's
drift below ``split_threshold``: expansion and split copies cannot reach it. Every decision is in
``info`` (selected, added, pruned, split per layer, the loss test) and the growth in ``footprint``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..data.scenario import Task
from ..engine.loop import Batch, StepOutput, TrainContext
from ..errors import ConfigError
from ..nn.den import DENNet, bfs_select, unit_masks
from ..nn.lasem_cnn import LasemCNN, trunc_normal_
from .base import BackboneFactory, Footprint, Method, TaskMeta
from .lasem_common import TOY_DEFAULTS, LasemHParams, PeakTracker, lasem_lr
from .lasem_stage import fit_stage, stage_info

# utils_env_cl.py (lasem.md 8): CIFAR-100 4 layers k = 16 with FC hidden [128]; Office-Home k = 32 with [256, 64].
CODE_SIZES = {"cifar": (16, [128]), "officehome": (32, [256, 64])}
Masks = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class DENConfig(LasemHParams):
    l1_lambda: float = 1e-6  # lasem.md 8 (den l1_lambda): proximal L1, threshold lr * l1 per step (DEN code 1e-5)
    l2_lambda: float = 0.01  # lasem.md 8 (l2_lambda): l2/2 ||W||^2 on what a stage trains (DEN code 1e-4)
    gl_lambda: float = 0.8  # lasem.md 8 (gl_lambda): group lasso on new units' incoming weights, threshold lr * gl
    reg_lambda: float = 0.5  # lasem.md 8 (reg_lambda): reg/2 ||W_S - W_S^{t-1}||^2 in selective retraining (DEN code 0.5)
    loss_threshold: float = 0.01  # lasem.md 8 (loss_threshold): expand while the training CE exceeds it (DEN code loss_thr)
    sparsity_threshold: list[float] = field(default_factory=lambda: [0.98, 0.01])  # lasem.md 8: [unit, weight], see below
    expansion: int | None = None  # lasem.md 8 den_expansion k per layer: CIFAR 16, Office-Home 32 (None: by variant)
    hidden: list[int] | None = None  # lasem.md 8: DEN's FC hidden, CIFAR [128], Office-Home [256, 64] (None: by variant)
    split_threshold: float = 0.05  # DEN code spl_thr 0.05 (LASEM configures none): drift sigma, L2 of a unit's incoming weights
    head_fraction: float = 0.1  # DEN code early_training = max_iter / 10: the new head's L1 stage
    expand_epochs: int | None = None  # the expansion stage's epochs (None: epochs, as the code's max_iter per stage)
    split_epochs: int | None = None  # the split stage's epochs (None: epochs)

    def validate(self) -> None:
        super().validate()
        if len(self.sparsity_threshold) != 2 or not 0 < self.sparsity_threshold[0] <= 1 or self.sparsity_threshold[1] < 0:
            raise ConfigError("sparsity_threshold is [unit sparsity in (0, 1], weight magnitude >= 0], e.g. [0.98, 0.01]")
        if (self.expansion is not None and self.expansion < 1) or not 0 < self.head_fraction <= 1:
            raise ConfigError("expansion >= 1 and 0 < head_fraction <= 1 are required")


class DEN(Method):
    name = "den"
    paper = "Yoon et al., Lifelong Learning with Dynamically Expandable Networks (ICLR 2018), with LASEM's configured values"
    settings = ("task",)
    Config = DENConfig
    val_fraction = 0.15  # the peak accuracy's validation split, as every LASEM-family method
    benchmark_defaults = TOY_DEFAULTS
    guarantees_unforgetting = False  # selective retraining moves old units by up to split_threshold

    def __init__(self, config: DENConfig, setting: str, make_backbone: BackboneFactory) -> None:
        super().__init__(config, setting, make_backbone)
        probe = make_backbone()
        if not isinstance(probe, LasemCNN):
            raise ConfigError(f"method {self.name} builds the LASEM conv nets: pass --backbone lasem_cnn")
        spec = probe.spec
        k, hidden = next((v for key, v in CODE_SIZES.items() if spec.variant.startswith(key)), (16, list(spec.hidden)))
        self.k = config.expansion or k
        self.net = DENNet(spec, config.hidden if config.hidden is not None else hidden)
        self.register_buffer("global_epoch", torch.zeros((), dtype=torch.long))
        self.stamps: list[list[int]] = []  # per finished task: the width of every layer when it finished
        self._lr = 0.0

    # ------------------------------------------------------------ structure
    def begin_task(self, meta: TaskMeta) -> None:
        super().begin_task(meta)
        self.net.add_head(meta.id, meta.num_classes)

    def extra_structure(self) -> dict[str, Any]:
        return {"stamps": [list(s) for s in self.stamps]}

    def rebuild_extra(self, structure: dict[str, Any]) -> None:
        self.stamps = [list(s) for s in structure.get("stamps", [])]
        if not self.stamps:
            return
        widths = self.stamps[-1]
        for l, layer in enumerate(self.net.layers):
            layer.resize(self.net.spec.in_channels if l == 0 else widths[l - 1], widths[l])
        for t, s in enumerate(self.stamps):
            head = self.net.heads[str(t)]
            head.weight = torch.nn.Parameter(torch.zeros(head.out_features, s[-1], device=head.weight.device))

    def widths_for(self, t: int) -> list[int]:
        return self.stamps[t] if t < len(self.stamps) else self.net.widths

    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        assert task_id is not None
        return self.net(x, task_id, self.widths_for(task_id))

    # ------------------------------------------------------------ trainable-entry masks
    def masks(self, rows: list[torch.Tensor], cols_any: bool, born: list[torch.Tensor] | None = None) -> Masks:
        return unit_masks(self.net.layers, rows, cols_any, born)

    def born_masks(self, old: list[int]) -> tuple[Masks, list[torch.Tensor]]:
        born = [torch.arange(n) >= o for n, o in zip(self.net.widths, old)]
        return self.masks(born, True, born), born

    # ------------------------------------------------------------ one stage
    def stage(self, ctx: TrainContext, task: Task, tracker: PeakTracker, name: str, masks: Masks, epochs: int,
              prev: list[tuple[torch.Tensor, torch.Tensor]] | None = None, groups: list[range] | None = None,
              count: bool = False, layers: bool = True) -> float:
        """Train the masked entries (and task t's head) on CE + l2 + (prev) the drift term, with the proximal
        L1 step and (groups) group lasso on those units' rows; returns the last epoch's mean loss."""
        cfg: DENConfig = self.config
        t = task.id
        head = self.net.heads[str(t)]
        self._lr = lasem_lr(cfg, int(self.global_epoch))

        def loss(b: Batch) -> StepOutput:
            out = self.predict(b.x, t)
            pen = head.weight.square().sum()
            for layer, (wm, _) in zip(self.net.layers, masks):
                pen = pen + (layer.weight * wm).square().sum()
            total = F.cross_entropy(out, b.y) + 0.5 * cfg.l2_lambda * pen
            if prev is not None:
                drift = sum(((layer.weight[:p.shape[0], :p.shape[1]] - p) * wm[:p.shape[0], :p.shape[1]]).square().sum()
                            for layer, (wm, _), (p, _) in zip(self.net.layers, masks, prev))
                total = total + 0.5 * cfg.reg_lambda * drift
            return StepOutput(total, out)

        def after_backward() -> None:
            for layer, (wm, bm) in zip(self.net.layers, masks):
                if layer.weight.grad is not None:
                    layer.weight.grad.mul_(wm)
                    layer.bias.grad.mul_(bm)

        @torch.no_grad()
        def after_step() -> None:
            thr = self._lr * cfg.l1_lambda
            for w, m in [(layer.weight, wm) for layer, (wm, _) in zip(self.net.layers, masks)] + [(head.weight, None)]:
                shrunk = w.sign() * (w.abs() - thr).clamp_min(0)
                w.copy_(shrunk if m is None else torch.where(m > 0, shrunk, w))
            for layer, rows in zip(self.net.layers, groups or []):
                g = layer.weight[rows.start:rows.stop]
                norm = g.flatten(1).norm(dim=1).clamp_min(1e-12)
                g.mul_((1 - self._lr * cfg.gl_lambda / norm).clamp_min(0).view((-1,) + (1,) * (g.dim() - 1)))

        def after_epoch(epoch: int) -> None:
            self._lr = lasem_lr(cfg, int(self.global_epoch))

        params = [p for layer in self.net.layers for p in (layer.weight, layer.bias)] if layers else []
        stats = fit_stage(self, ctx, task, params + list(head.parameters()), loss, lambda x: self.predict(x, t), cfg,
                          epochs=epochs, tracker=tracker, name=name, after_backward=after_backward, after_step=after_step,
                          count_epochs=count, after_epoch=after_epoch)
        return stats[-1].loss if stats else float("nan")

    # ------------------------------------------------------------ expansion, pruning, split
    @torch.no_grad()
    def expand(self, t: int, k: int) -> None:
        """Append k units to every hidden layer, bottom up: each connects to every unit below (new ones
        included) and feeds every unit above and task t's head (truncated normal 0.05, bias 0.2)."""
        layers = self.net.layers
        for l, layer in enumerate(layers):
            layer.append_outputs(trunc_normal_(torch.empty((k, layer.n_in) + layer.block)), torch.full((k,), 0.2))
            if l + 1 < len(layers):
                nxt = layers[l + 1]
                nxt.append_inputs(trunc_normal_(torch.empty((nxt.n_out, k) + nxt.block)))
            else:
                self.net.head_append_inputs(t, trunc_normal_(torch.empty(self.net.heads[str(t)].out_features, k)))

    @torch.no_grad()
    def remove_units(self, t: int, drop: list[torch.Tensor]) -> None:
        """Remove the units marked in ``drop`` (per layer): their rows, and their columns above / in task t's head."""
        layers = self.net.layers
        for l, d in enumerate(drop):
            keep = ~d.to(layers[l].weight.device)
            layers[l].keep_outputs(keep)
            if l + 1 < len(layers):
                layers[l + 1].keep_inputs(keep)
            else:
                head = self.net.heads[str(t)]
                head.weight = torch.nn.Parameter(head.weight[:, keep].clone())

    def useless(self, old: list[int]) -> list[torch.Tensor]:
        """New units (index >= old) whose incoming weights are zero (|w| <= the weight threshold) in at least
        the unit-sparsity fraction of their entries."""
        unit, zero = self.config.sparsity_threshold
        out = []
        for layer, o in zip(self.net.layers, old):
            frac = (layer.weight.detach().abs() <= zero).flatten(1).float().mean(1).cpu()
            out.append((torch.arange(layer.n_out) >= o) & (frac >= unit))
        return out

    @torch.no_grad()
    def split(self, t: int, old: list[int], prev: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[list[list[int]], list[float]]:
        """Duplicate the old units whose incoming weights from old units drifted more than split_threshold
        (at most k per layer, largest first): the copy (born at t) keeps the new weights and feeds what the
        original feeds; the original is restored exactly to its t-1 incoming weights and bias."""
        layers, head = self.net.layers, self.net.heads[str(t)]
        chosen, peaks = [], []
        for l, (layer, (pw, pb)) in enumerate(zip(layers, prev)):
            drift = (layer.weight[:pw.shape[0], :pw.shape[1]] - pw).flatten(1).norm(dim=1)
            peaks.append(round(float(drift.max()), 6) if drift.numel() else 0.0)
            over = torch.nonzero(drift > self.config.split_threshold).flatten()
            idx = over[drift[over].argsort(descending=True)][: self.k].sort().values
            chosen.append(idx.tolist())
            if not len(idx):
                continue
            rows, bias = layer.weight[idx].clone(), layer.bias[idx].clone()
            layer.weight[idx, :pw.shape[1]] = pw[idx]
            layer.bias[idx] = pb[idx]
            layer.append_outputs(rows, bias)
            if l + 1 < len(layers):
                layers[l + 1].append_inputs(layers[l + 1].weight[:, idx].clone())
            else:
                self.net.head_append_inputs(t, head.weight[:, idx].clone())
        return chosen, peaks

    # ------------------------------------------------------------ one task
    def train_ce(self, task: Task, ctx: TrainContext, t: int) -> float:
        self.eval()
        logits = ctx.outputs(lambda x: self.predict(x, t), task.train, mean=task.mean, std=task.std)
        return F.cross_entropy(logits, task.train.labels).item() if len(logits) else 0.0

    def fit_task(self, task: Task, ctx: TrainContext) -> dict[str, Any]:
        cfg: DENConfig = self.config
        t, tracker, L = task.id, PeakTracker(), len(self.net.layers)
        ones = [torch.ones(n, dtype=torch.bool) for n in self.net.widths]
        info: dict[str, Any] = {"selected": None, "expanded": False, "added": [0] * L, "pruned": [0] * L,
                                "split": [[] for _ in range(L)]}
        if t == 0:
            self.stage(ctx, task, tracker, "sparse", self.masks(ones, False), cfg.epochs, count=True)
        else:
            old = self.net.widths
            prev = [(layer.weight.detach().clone(), layer.bias.detach().clone()) for layer in self.net.layers]
            none = self.masks([torch.zeros(n, dtype=torch.bool) for n in old], False)
            self.stage(ctx, task, tracker, "head", none, max(1, round(cfg.epochs * cfg.head_fraction)), layers=False)
            unit, zero = cfg.sparsity_threshold
            sel = bfs_select([layer.weight.detach() for layer in self.net.layers],
                             self.net.heads[str(t)].weight.detach(), zero, unit)
            self.stage(ctx, task, tracker, "selective", self.masks([s.cpu() for s in sel], False), cfg.epochs, prev=prev,
                       count=True)
            info["selected"] = [int(s.sum()) for s in sel]
            info["loss_after_selective"] = round(self.train_ce(task, ctx, t), 6)
            if info["loss_after_selective"] > cfg.loss_threshold:
                self.expand(t, self.k)
                masks, _ = self.born_masks(old)
                self.stage(ctx, task, tracker, "expand", masks, cfg.expand_epochs or cfg.epochs,
                           groups=[range(o, o + self.k) for o in old])
                drop = self.useless(old)
                self.remove_units(t, drop)
                info.update(expanded=True, added=[self.k] * L, pruned=[int(d.sum()) for d in drop])
            info["split"], info["drift_max"] = self.split(t, old, prev)
            if any(info["split"]):
                masks, _ = self.born_masks(old)
                self.stage(ctx, task, tracker, "split", masks, cfg.split_epochs or cfg.epochs)
            info["born"] = [n - o for n, o in zip(self.net.widths, old)]
        self.stamps.append(self.net.widths)
        info["widths"] = self.net.widths
        return {**info, **stage_info(self, tracker, cfg)}

    # ------------------------------------------------------------ reporting
    def task_summary(self, info: dict[str, Any]) -> str:
        peak = (info.get("peak") or {}).get("test_accuracy")
        parts = [f"widths {'/'.join(map(str, info.get('widths') or []))}"]
        if info.get("selected") is not None:
            parts.append(f"selected {'/'.join(map(str, info['selected']))}")
        if info.get("expanded"):
            parts.append(f"+{info['added'][0]} pruned {'/'.join(map(str, info['pruned']))}")
        if any(info.get("split") or []):
            parts.append(f"split {'/'.join(str(len(s)) for s in info['split'])}")
        return ", ".join(parts + ([f"peak {peak:.3f}"] if peak is not None else []))

    def footprint(self) -> Footprint:
        """Every layer at its current width once, plus the heads (fp32, dense); per task: what it added."""
        heads = [sum(p.numel() for p in self.net.heads[str(t)].parameters()) for t in range(len(self.tasks))]
        grown = [self.net.count(s) - (self.net.count(self.stamps[t - 1]) if t else 0) for t, s in enumerate(self.stamps)]
        per_task = [4 * (g + h) for g, h in zip(grown, heads)]
        total = self.net.count(self.net.widths) + sum(heads)
        first = self.stamps[0] if self.stamps else self.net.widths
        return Footprint(total, 4 * total, per_task, f"den: widths {'/'.join(map(str, first))} after task 1 -> "
                         f"{'/'.join(map(str, self.net.widths))} now; dense fp32, heads included")
