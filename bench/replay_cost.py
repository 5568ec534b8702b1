"""The cost of exemplar replay and distillation: iCaRL, LUCIR and BiC against finetune on one stream.

Same synthetic CIFAR-sized stream (uint8 32x32, batched augmentation), same backbone and init,
one epoch per phase, batch 128. Per step and method:

- ``train sps``: samples/s of the main training phase as the loop measures it (replayed
  exemplars included; the teacher's forward pass and the distillation terms are the difference);
- ``step sps``: new-task images per second of the whole ``fit_task`` (replay, teacher, imprinting,
  herding, class means, BiC's bias stage) - what a user waits for.

Ratios are method / finetune (1.0 = free). Step 1 has no teacher and no exemplars.

    python bench/replay_cost.py [--backbone resnet32] [--per-class 250] [--steps 5] [--memory 200]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from common import CIFAR_SPEC, cifar_like, machine
from lifelong.data.scenario import build_tasks
from lifelong.engine.loop import TrainContext
from lifelong.methods.base import TaskMeta
from lifelong.methods.registry import method_class
from lifelong.nn.backbones import BackboneConfig, build_backbone

METHODS = ("finetune", "icarl", "lucir", "bic")


def build(method: str, a: argparse.Namespace) -> tuple[Any, TrainContext, list[dict]]:
    """A method at its paper defaults, but 1 epoch per phase, batch 128, no lr decay, memory ``a.memory``."""
    torch.manual_seed(0)
    cls = method_class(method)
    hp = cls.Config()
    hp.epochs, hp.batch_size, hp.milestones = 1, 128, []
    if hasattr(hp, "memory"):
        hp.memory = a.memory
    if hasattr(hp, "bias_epochs"):
        hp.bias_epochs, hp.bias_milestones = 1, []
    m = cls(hp, "class", lambda: build_backbone(BackboneConfig(a.backbone), 3, 32))
    logs: list[dict] = []
    return m, TrainContext(torch.device("cpu"), CIFAR_SPEC, seed=0, epoch_log=logs.append), logs


def step(method: Any, ctx: TrainContext, logs: list[dict], task: Any) -> tuple[float, float]:
    """(train-phase samples/s, new images per second of fit_task) of one step."""
    ctx.start_task(task.id)
    method.begin_task(TaskMeta.of(task))
    logs.clear()
    t0 = time.perf_counter()
    method.fit_task(task, ctx)
    seconds = time.perf_counter() - t0
    train = [r for r in logs if r["phase"] == "train"]
    return train[0]["samples_per_s"], len(task.train) / seconds


def herding_by_distances(features: torch.Tensor, m: int) -> torch.Tensor:
    """The textbook form of iCaRL's herding (an (n, d) distance temporary per pick), the baseline the
    library's matrix-vector form (``memory.herding``) is timed against; both pick the same indices."""
    f = torch.nn.functional.normalize(features.double(), dim=1)
    mu, running = f.mean(0), torch.zeros(f.shape[1], dtype=torch.float64)
    free, picks = torch.ones(len(f), dtype=torch.bool), []
    for k in range(1, m + 1):
        dist = ((mu[None] - (running[None] + f) / k) ** 2).sum(1)
        dist[~free] = float("inf")
        i = int(torch.argmin(dist))
        picks.append(i)
        free[i] = False
        running += f[i]
    return torch.tensor(picks)


def herding_cost(n: int = 6000, d: int = 128, m: int = 1000) -> None:
    """One Fashion-MNIST class (6,000 images, 128-d features) herded to 1,000 exemplars (2,000 / 2 classes)."""
    from lifelong.methods.memory import herding

    feats = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    ours = herding(feats, m)
    t1 = time.perf_counter()
    ref = herding_by_distances(feats, m)
    t2 = time.perf_counter()
    assert torch.equal(ours, ref)
    print(f"herding {n} x {d} -> {m}: library {t1 - t0:.2f}s, distance form {t2 - t1:.2f}s, "
          f"speed-up {(t2 - t1) / (t1 - t0):.1f}x (same picks)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="resnet32")
    ap.add_argument("--per-class", type=int, default=250)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--classes-per-step", type=int, default=2)
    ap.add_argument("--memory", type=int, default=200)
    ap.add_argument("--herding-only", action="store_true")
    a = ap.parse_args()
    herding_cost()
    if a.herding_only:
        return
    n_classes = a.steps * a.classes_per_step
    data = cifar_like(n_classes * a.per_class, n_classes)
    data.labels = torch.arange(len(data.labels)) % n_classes  # balanced classes
    test = data.subset(torch.arange(n_classes))
    groups = [list(range(i, i + a.classes_per_step)) for i in range(0, n_classes, a.classes_per_step)]
    tasks = build_tasks(data, test, groups, data.class_names, "class")
    # Methods advance step by step, interleaved (order rotated each step), so drifts in machine load
    # hit all of them alike and the per-step ratios compare like with like.
    runs = {m: build(m, a) for m in METHODS}
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in METHODS}
    for s, task in enumerate(tasks):
        for m in METHODS[s % len(METHODS):] + METHODS[: s % len(METHODS)]:
            results[m].append(step(*runs[m], task))
    print(f"machine: {machine()}")
    print(f"backbone {a.backbone}, {a.steps} steps x {a.classes_per_step} classes x {a.per_class} images (32x32), "
          f"memory {a.memory}, batch 128, 1 epoch per phase")
    head = "step " + "".join(f"| {m:>8} train sps  step sps " for m in METHODS)
    print(head)
    for s in range(a.steps):
        cells = "".join(f"| {results[m][s][0]:18.0f} {results[m][s][1]:9.0f} " for m in METHODS)
        print(f"{s + 1:4d} {cells}")
    print("ratios to finetune (train sps / step sps):")
    for m in METHODS[1:]:
        r = [f"{results[m][s][0] / results['finetune'][s][0]:.2f}/{results[m][s][1] / results['finetune'][s][1]:.2f}"
             for s in range(a.steps)]
        later = range(1, a.steps)
        mt = sum(results[m][s][0] / results["finetune"][s][0] for s in later) / len(later)
        ms = sum(results[m][s][1] / results["finetune"][s][1] for s in later) / len(later)
        print(f"  {m:8s} per step: {'  '.join(r)}   mean of steps 2-{a.steps}: {mt:.2f} / {ms:.2f}")


if __name__ == "__main__":
    main()
