"""Evaluation after each task: one row of the accuracy matrix (and top-5, and variants).

The evaluator enforces the setting: in the class setting ``predict`` never gets a
task id, and logits cover every class seen so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data.scenario import Scenario
from ..methods.base import Method
from .loop import TrainContext


@dataclass
class Row:
    top1: list[float]  # per task j <= i
    top5: list[float]
    seen_top1: float  # accuracy on every test sample of tasks 0..i (sample-weighted)
    seen_top5: float
    variants: dict[str, list[float]] = field(default_factory=dict)  # e.g. "nme", "before_correction"
    variants_seen: dict[str, float] = field(default_factory=dict)


def _topk(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(1)


@torch.no_grad()
def evaluate(method: Method, scenario: Scenario, upto: int, ctx: TrainContext, batch_size: int = 256) -> Row:
    method.eval()
    class_setting = scenario.setting == "class"
    hits: dict[str, list[torch.Tensor]] = {"main": []}
    hits5: list[torch.Tensor] = []
    for task in scenario.tasks[: upto + 1]:
        tid = None if class_setting else task.id
        main, top5, variants = [], [], {}
        # under torchrun: this rank's shard of the test set, the hits gathered back (identical everywhere)
        for b in ctx.iterate(ctx.shard(task.test), batch_size, train=False, mean=task.mean, std=task.std):
            logits = method.predict(b.x, tid).float()
            main.append((logits.argmax(1) == b.y).cpu())
            top5.append(_topk(logits, b.y, 5).cpu())
            for name, out in method.predict_variants(b.x, tid).items():
                variants.setdefault(name, []).append((out.float().argmax(1) == b.y).cpu())
        n = len(task.test)
        gathered = lambda parts: ctx.gather(torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool), n)
        hits["main"].append(gathered(main))
        hits5.append(gathered(top5))
        for name, parts in variants.items():
            hits.setdefault(name, []).append(gathered(parts))
    acc = lambda h: h.float().mean().item() if len(h) else float("nan")
    row = Row([acc(h) for h in hits["main"]], [acc(h) for h in hits5],
              acc(torch.cat(hits["main"])), acc(torch.cat(hits5)))
    for name, per_task in hits.items():
        if name != "main":
            row.variants[name] = [acc(h) for h in per_task]
            row.variants_seen[name] = acc(torch.cat(per_task))
    return row


@torch.no_grad()
def probe_outputs(method: Method, scenario: Scenario, task_id: int, ctx: TrainContext, n: int = 64) -> torch.Tensor:
    """Logits of the first ``n`` test images of a task: the fingerprint that proves unforgetting."""
    method.eval()
    task = scenario.tasks[task_id]
    probe = task.test.subset(torch.arange(min(n, len(task.test))))
    tid = None if scenario.setting == "class" else task_id
    # every rank computes the whole probe as one batch: the fingerprint does not depend on the world size
    return ctx.outputs(lambda x: method.predict(x, tid), probe, batch_size=n, mean=task.mean, std=task.std, shard=False)
