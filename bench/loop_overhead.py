"""Samples/s of our shared loop (``finetune.fit_task``) against a bare hand-written PyTorch loop.

Same backbone (seeded identically), same data, batch size, optimizer and batched
augmentation; the only difference is the loop (hooks, per-epoch statistics,
schedule, logging). Target ratio >= 0.95.

    python bench/loop_overhead.py [--backbone resnet32] [--n 2048] [--epochs 2]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common import CIFAR_SPEC, best_of, cifar_like, machine, one_task
from lifelong.data import augment
from lifelong.engine.loop import TrainContext
from lifelong.methods.base import TaskMeta
from lifelong.methods.finetune import Finetune, FinetuneConfig
from lifelong.nn.backbones import BackboneConfig, build_backbone


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="resnet32")
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    data = cifar_like(a.n)
    task = one_task(data)
    hp = FinetuneConfig(epochs=a.epochs, batch_size=a.batch, lr=0.01, milestones=[])
    device = torch.device("cpu")

    def ours() -> int:
        torch.manual_seed(0)
        m = Finetune(hp, "task", lambda: build_backbone(BackboneConfig(a.backbone), 3, 32))
        m.begin_task(TaskMeta(0, "bench", 10))
        ctx = TrainContext(device, CIFAR_SPEC, seed=0)
        m.fit_task(task, ctx)
        return a.n * a.epochs

    def bare() -> int:
        torch.manual_seed(0)
        net = build_backbone(BackboneConfig(a.backbone), 3, 32)
        head = torch.nn.Linear(net.out_dim, 10)
        params = list(net.parameters()) + list(head.parameters())
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=4e-5)
        gen = torch.Generator().manual_seed(0)
        net.train()
        for _ in range(a.epochs):
            for idx in torch.randperm(a.n, generator=gen).split(a.batch):
                x = augment.train_batch(data.images[idx], CIFAR_SPEC, gen)
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(head(net(x)), data.labels[idx])
                loss.backward()
                opt.step()
        return a.n * a.epochs

    ours()  # warm-up (allocator, kernels)
    bare()
    # Interleave to share any drift in machine load between both.
    b, o = [], []
    for _ in range(3):
        b.append(best_of(bare, 1))
        o.append(best_of(ours, 1))
    sb, so = max(b), max(o)
    print(f"machine: {machine()}")
    print(f"backbone {a.backbone}, {a.n} images 32x32, batch {a.batch}, {a.epochs} epochs")
    print(f"bare PyTorch loop : {sb:8.1f} samples/s")
    print(f"lifelong loop     : {so:8.1f} samples/s")
    print(f"ratio (ours/bare) : {so / sb:.3f}")


if __name__ == "__main__":
    main()
