"""Pruning, goals and growth, and the shared base of the parameter-isolation methods (PackNet,
Piggyback, CPG; a PackNet-pruned, CPG-grown method such as PAE combines the same pieces).

Pieces usable on their own (cpg.md 4.2-4.6):

- compacting: ``cubic_sparsity`` (Zhu and Gupta's schedule), ``magnitude_select`` /
  ``prune_layerwise`` (layer-wise magnitude pruning of a task's own weights, one shot),
  ``CubicPruner`` (an ``after_step`` hook pruning gradually along the schedule),
  ``ratio_runs``, ``choose_ratio``, ``reserved_ratio``;
- goals: ``GoalRule`` (is an accuracy good enough: goal, margin, train-accuracy gate);
- growing: ``Growth`` (the parameter-multiplier steps) and ``train_until_goal`` (train, and
  while the goal is missed, restore the state before the task, grow and train again);
- reporting: ``paper_columns`` (the paper's Exp and Red).

``IsolationMethod`` holds what the methods share: a ``MaskedBackbone``, one head per task, the
training pieces they hand to ``ctx.fit`` (parameter lists, manual weight decay on owned weights
only, re-zeroing of freed weights), the isolation check and the footprint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.imageset import ImageSet
from ..data.scenario import Task
from ..engine.loop import Batch, StepOutput, TrainContext
from ..errors import ConfigError
from ..nn.masked import MaskedBackbone, storage_bytes
from .base import BackboneFactory, Footprint, Method, TaskMeta

DEFAULT_RATIOS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]  # cpg.md 4.3: one run per step


# --------------------------------------------------------------------------- schedule and selection
def cubic_sparsity(step: int, initial: float, final: float, begin: int, end: int) -> float:
    """``s_f + (s_i - s_f)·(1 - p)^3`` with ``p = clip((step - b)/(e - b), 0, 1)`` (cpg.md 4.3)."""
    if end <= begin:
        return final
    p = min(max((step - begin) / (end - begin), 0.0), 1.0)
    return final + (initial - final) * (1.0 - p) ** 3


def ratio_runs(ratios: Sequence[float]) -> list[tuple[float, float]]:
    """The gradual-pruning runs ``0→r1, r1→r2, ...`` (cpg.md 4.3)."""
    out, prev = [], 0.0
    for r in ratios:
        out.append((prev, float(r)))
        prev = float(r)
    return out


def magnitude_select(weight: torch.Tensor, owner: torch.Tensor, owner_id: int, sparsity: float) -> torch.Tensor:
    """Layer-wise magnitude pruning (cpg.md 4.3): among the candidates (owned by ``owner_id``, or
    free = already pruned in this task), ``k = round(s·|candidates|)``, cutoff = k-th smallest
    |w|; returns the owned weights with ``|w| <= cutoff`` (bool mask). Other owners never qualify."""
    mine = owner == owner_id
    candidates = mine | (owner == 0)
    n = int(candidates.sum())
    k = round(sparsity * n)
    if k <= 0:
        return torch.zeros_like(mine)
    mag = weight.detach().abs()
    cutoff = mag[candidates].float().kthvalue(min(k, n)).values
    return mine & (mag <= cutoff)


def prune_layerwise(mb: MaskedBackbone, task: int, sparsity: float) -> int:
    """Free ``sparsity`` of each layer's candidates for ``task`` by magnitude; returns how many were freed."""
    v, freed = mb.owner_id(task), 0
    for name in mb.layers:
        which = magnitude_select(mb.weight(name), mb.owner(name), v, sparsity)
        n = int(which.sum())
        if n:
            mb.release(name, which)
            freed += n
    return freed


class CubicPruner:
    """One gradual-pruning run ``initial -> final`` as an ``after_step`` hook (cpg.md 4.3, ``utils/prune.py``).

    ``step`` counts optimiser steps from 0; at every ``frequency``-th step up to ``end`` (and at
    ``end`` itself, so a short run still reaches its target) the task's weights are pruned
    layer-wise to ``cubic_sparsity(step, initial, final, 0, end)``; after every step freed
    weights are re-zeroed (pitfall 3). ``finish()`` brings the run to ``final`` if it ended
    before ``end`` (the original would record a lower sparsity under the target's name).
    """

    def __init__(self, mb: MaskedBackbone, task: int, initial: float, final: float, end: int, frequency: int) -> None:
        self.mb, self.task = mb, task
        self.initial, self.final = initial, final
        self.end, self.frequency = max(1, end), max(1, frequency)
        self.step = 0

    def __call__(self) -> None:
        self.step += 1
        k = self.step
        if k <= self.end and (k % self.frequency == 0 or k == self.end):
            prune_layerwise(self.mb, self.task, cubic_sparsity(k, self.initial, self.final, 0, self.end))
        self.mb.zero_free()

    def finish(self) -> None:
        prune_layerwise(self.mb, self.task, self.final)


def choose_ratio(record: dict[float, float], goal: float, allow_loss: float = 0.0, take_highest: bool = False) -> float:
    """The largest recorded ratio whose accuracy (+ ``allow_loss``) meets the goal, else 0 (unpruned);
    ``take_highest``: the largest recorded ratio regardless (goal missed at full width, cpg.md 4.6)."""
    if not record:
        return 0.0
    if take_highest:
        return max(record)
    for r in sorted(record, reverse=True):
        if record[r] + allow_loss >= goal:
            return r
    return 0.0


def reserved_ratio(remaining: int) -> float:
    """Highest ratio to prune to when the goal is missed at full width: leave ``round(1/(R+1), 1)``
    for this task, the rest for the ``R`` remaining tasks; Python's ``round`` as the original (pitfall 13)."""
    return 1.0 - round(1.0 / (remaining + 1), 1)


# --------------------------------------------------------------------------- goals and growth
@dataclass
class GoalRule:
    """When an accuracy meets a task's goal (cpg.md 4.6): ``accuracy + margin >= goal`` and, when
    ``min_train_accuracy > 0`` (the CIFAR scripts' gate, cpg.md 4.2), ``train_accuracy >`` it."""

    margin: float = 0.0
    min_train_accuracy: float = 0.0

    def met(self, accuracy: float, goal: float, train_accuracy: float | None = None) -> bool:
        train_ok = self.min_train_accuracy <= 0 or (train_accuracy or 0.0) > self.min_train_accuracy
        return train_ok and accuracy + self.margin >= goal


@dataclass
class Growth:
    """The growing steps (cpg.md 4.4): the parameter multiplier P starts at 1, grows by ``step`` up to
    ``max_param_multiplier``, and is never reset; channels are multiplied by sqrt(P) (pitfall 2)."""

    max_param_multiplier: float = 1.5
    step: float = 0.5

    def can_grow(self, p: float) -> bool:
        return p < self.max_param_multiplier - 1e-9

    def next(self, p: float) -> float:
        return min(self.max_param_multiplier, p + self.step)

    @staticmethod
    def width(p: float) -> float:
        return math.sqrt(p)


def train_until_goal(method: "IsolationMethod", task: int, attempt: Callable[[], dict[str, Any]], goal: float,
                     rule: GoalRule, growth: Growth, param_multiplier: float) -> tuple[list[dict[str, Any]], bool, float]:
    """The GROW loop (cpg.md 4.2, ``experiment1/CPG_cifar100_scratch_mul_1.5.sh`` exit code 2): run
    ``attempt()`` (train the task; returns at least its selection ``accuracy`` and ``train_accuracy``,
    plus anything to record); while the goal is missed and the network may grow, restore the state from
    before the task, grow to the next multiplier (a fresh head for ``task``) and try again. Returns the
    attempts (multipliers, what ``attempt`` returned, ``goal_met``), whether the goal was met, and P."""
    start = method.mb.snapshot()
    attempts: list[dict[str, Any]] = []
    while True:
        result = attempt()
        met = rule.met(result["accuracy"], goal, result["train_accuracy"])
        attempts.append({"param_multiplier": param_multiplier, "width_multiplier": method.mb.width, **result,
                         "goal_met": met})
        if met or not growth.can_grow(param_multiplier):
            return attempts, met, param_multiplier
        method.mb.restore(start)  # retry from the state before this task, wider
        param_multiplier = growth.next(param_multiplier)
        method.mb.grow(growth.width(param_multiplier))
        method.replace_head(task)


def paper_columns(mb: MaskedBackbone) -> dict[str, float]:
    """The paper's table columns (cpg.md 6, CIFAR), in units of the *original* network (width 1):
    ``exp`` = maskable weights now / at width 1 (1.5 for CPG on CIFAR), ``red`` = free weights (owner 0)
    now / maskable weights at width 1 (0.41 for CPG avg). ``free_fraction`` in ``info`` is relative to
    the network as grown."""
    original = mb.shapes_at(1.0)
    n0 = sum(math.prod(original[n]) for n in mb.layers)
    now = sum(mb.owner(n).numel() for n in mb.layers)
    free = sum(int((mb.owner(n) == 0).sum()) for n in mb.layers)
    return {"exp": now / n0, "red": free / n0}


def last_train_accuracy(history: Sequence[Any]) -> float | None:
    """The last epoch's running train accuracy of a phase (None when nothing ran)."""
    return history[-1].accuracy if history else None


def chosen_record(split: str, accuracy: float, stage: str) -> dict[str, Any]:
    """What a method records of the model it keeps for a task: the accuracy it measured on ``split``
    ("val", "test" or "train_eval", the training images test-transformed) with ``ctx.accuracy``
    before the task was stored. The runner recomputes it on the served model and records
    ``served_equals_trained`` (they must be equal exactly)."""
    return {"split": split, "accuracy": accuracy, "stage": stage}


# --------------------------------------------------------------------------- the shared base
def new_head(in_dim: int, num_classes: int, device: torch.device | None = None) -> nn.Linear:
    """A task head initialised N(0, 0.01), bias 0 (cpg.md 4.7)."""
    head = nn.Linear(in_dim, num_classes, device=device)
    nn.init.normal_(head.weight, 0.0, 0.01)
    nn.init.zeros_(head.bias)
    return head


class IsolationMethod(Method):
    """Task-incremental parameter isolation over a ``MaskedBackbone``; old tasks are bit-exact."""

    settings = ("task",)
    guarantees_unforgetting = True
    owner_index = True  # whether serving needs the per-weight owner index (footprint, cpg.md 6)

    def __init__(self, config: Any, setting: str, make_backbone: BackboneFactory, base: int = 0,
                 net: nn.Module | None = None) -> None:
        super().__init__(config, setting, make_backbone)
        self.mb = MaskedBackbone(net if net is not None else make_backbone(), make_backbone, base=base)
        self.heads = nn.ModuleList()

    @property
    def device(self) -> torch.device:
        return self.mb.weight(self.mb.layers[0]).device

    # ------------------------------------------------------------------ structure
    def begin_task(self, meta: TaskMeta) -> None:
        super().begin_task(meta)
        self.heads.append(new_head(self.mb.out_dim, meta.num_classes, self.device))

    def replace_head(self, task: int) -> nn.Linear:
        """A fresh head for ``task`` at the current width (after growing)."""
        self.heads[task] = new_head(self.mb.out_dim, self.heads[task].out_features, self.device)
        return self.heads[task]

    def extra_structure(self) -> dict[str, Any]:
        return {"width": self.mb.width, "widths": list(self.mb.widths), "has_pick": list(self.mb.has_pick)}

    def rebuild_extra(self, structure: dict[str, Any]) -> None:
        if not structure:
            return
        self.mb.rebuild(float(structure["width"]), [float(w) for w in structure["widths"]], list(structure["has_pick"]))
        for t, w in enumerate(self.mb.widths):
            if self.heads[t].in_features != self.mb.out_dim_at(w):
                self.heads[t] = new_head(self.mb.out_dim_at(w), self.heads[t].out_features, self.device)

    # ------------------------------------------------------------------ inference
    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        if task_id is None:
            raise ConfigError(f"{self.name} is task-incremental: predict needs a task id")
        return self.heads[task_id](self.mb(x, task_id))

    def accuracy(self, ctx: TrainContext, task: int, data: ImageSet) -> float:
        """Accuracy of ``task`` (finished or in training) on ``data``, in eval mode."""
        was = self.training
        self.eval()
        try:
            return ctx.accuracy(lambda x: self.predict(x, task), data)
        finally:
            self.train(was)

    # ------------------------------------------------------------------ training pieces
    def loss_fn(self, task: int) -> Callable[[Batch], StepOutput]:
        def loss(b: Batch) -> StepOutput:
            out = self.heads[task](self.mb(b.x, task))
            return StepOutput(F.cross_entropy(out, b.y), out)

        return loss

    def train_params(self, task: int, private: bool = True) -> list[nn.Parameter]:
        """What the task's SGD updates: weight tensors it owns entries of (gradients elsewhere are
        exactly zero, cpg.md pitfall 4), its private BN/bias copy and its head."""
        params = list(self.mb.owned_weights(task))
        if private:
            params += self.mb.private_parameters()
        return params + list(self.heads[task].parameters())

    def decay_hook(self, task: int, weight_decay: float) -> Callable[[], None] | None:
        """Weight decay added by hand to the task's own weights only (cpg.md 4.3); BN, biases, heads
        and other owners' weights get none. The optimiser's own weight_decay stays 0."""
        if weight_decay <= 0:
            return None

        def hook() -> None:
            with torch.no_grad():
                for i, name in enumerate(self.mb.layers):
                    w = self.mb.weight(name)
                    if w.grad is not None:
                        w.grad.addcmul_(w, self.mb.own_mask(task, i), value=weight_decay)

        return hook

    def train_all(self) -> None:
        self.train()

    def train_frozen_bn(self) -> None:
        """Train mode with every BatchNorm in eval mode (Piggyback ``train_nobn``, cpg.md 7.2)."""
        self.train()
        for m in self.mb.iter_bn():
            m.eval()

    def selection_data(self, task: Task, select_on: str) -> ImageSet:
        data = task.val if select_on == "val" else task.test
        if len(data) == 0:
            raise ConfigError(f"{self.name} selects on the {select_on} split, but task {task.name!r} has none; "
                              "set benchmark.val_fraction > 0 or --set select_on=test")
        return data

    def ownership_info(self, task: int) -> dict[str, Any]:
        """Fractions of the network as it is now (grown or not) owned by the task, free and owned by
        earlier tasks; the picked fraction of the earlier weights; the paper's Exp and Red."""
        c = self.mb.count(task)
        picked = self.mb.picked_fraction(task)
        return {"width_multiplier": self.mb.width, "owned_fraction": c["owned"] / c["total"],
                "free_fraction": c["free"] / c["total"], "earlier_fraction": c["earlier"] / c["total"],
                "picked_fraction": picked, **paper_columns(self.mb)}

    def trained_accuracy(self, ctx: TrainContext, task: Task) -> dict[str, Any]:
        """``chosen_record`` for a method that selects nothing (PackNet, Piggyback): the kept model's
        accuracy on the training images, test-transformed, measured before the task is stored."""
        return chosen_record("train_eval", self.accuracy(ctx, task.id, task.train), "last epoch")

    # ------------------------------------------------------------------ accounting
    def footprint(self) -> Footprint:
        """cpg.md 6's formula over what is stored (see ``nn.masked.storage_bytes``)."""
        heads = [sum(p.numel() for p in h.parameters()) for h in self.heads[: len(self.mb.widths)]]
        counts = self.mb.storage_counts(heads, self.owner_index)
        total = storage_bytes(counts)
        per_task = []
        for t in range(len(self.mb.widths)):
            owned = self.mb.count(t)["owned"]
            mask = math.ceil(counts.task_weights[t] / 8) if counts.picks[t] else 0
            per_task.append(4 * (owned + counts.private[t] + counts.heads[t]) + mask)
        literal = sum(t.numel() * t.element_size() for t in self.state_dict().values())
        params = counts.final_weights + sum(counts.private) + sum(counts.heads)
        return Footprint(params, total, per_task, self.footprint_note(counts) + f"; checkpoint state {literal} bytes")

    def footprint_note(self, counts: Any) -> str:
        return "fp32 weights at the final width, per-task BN/biases/heads, owner index and 1-bit masks (cpg.md 6)"
