"""Training speed on the real Fashion-MNIST stream: finetune and iCaRL against a bare PyTorch loop.

Class-incremental Split Fashion-MNIST (read from the IDX files, Debian's copy by default), the
benchmark's default backbone (``convnet_fc``), batch 64, one epoch per phase. Printed:

- bare loop vs ``finetune.fit_task`` on task 1, as samples/s and their ratio (target >= 0.95);
- iCaRL on task 2 (distillation from task 1's network, exemplars replayed): its training phase's
  samples/s, and the share of the step spent outside training (herding, class means), which
  must stay a small fraction;
- the IDX load time of the whole dataset.

    python bench/fashion_stream.py [--per-class 2000] [--memory 2000] [--data-root DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import best_of, machine
from lifelong.config import resolve
from lifelong.data import augment
from lifelong.data.benchmarks import BenchmarkConfig, build_scenario
from lifelong.engine.loop import TrainContext
from lifelong.engine.runner import build_method
from lifelong.methods.base import TaskMeta
from lifelong.nn.backbones import BackboneConfig, build_backbone


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=2000)
    ap.add_argument("--memory", type=int, default=2000)
    ap.add_argument("--data-root", default=None)
    a = ap.parse_args()
    root = Path(a.data_root) if a.data_root else None
    t0 = time.perf_counter()
    build_scenario("fashion-mnist", "class", BenchmarkConfig(), root)
    load_s = time.perf_counter() - t0
    scen = build_scenario("fashion-mnist", "class", BenchmarkConfig(per_class=a.per_class), root)
    task = scen.tasks[0]
    n, batch, device = len(task.train), 64, torch.device("cpu")

    def bare() -> int:
        torch.manual_seed(0)
        net = build_backbone(BackboneConfig("convnet_fc"), 1, 28)
        head = torch.nn.Linear(net.out_dim, 2)
        opt = torch.optim.SGD(list(net.parameters()) + list(head.parameters()), lr=0.025, momentum=0.9,
                              weight_decay=5e-4)
        gen = torch.Generator().manual_seed(0)
        net.train()
        for idx in torch.randperm(n, generator=gen).split(batch):
            x = augment.train_batch(task.train.batch_images(idx), scen.augment, gen)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(head(net(x)), task.train.labels[idx]).backward()
            opt.step()
        return n

    def method(name: str, **sets: object):
        cfg = resolve(name, "fashion-mnist", "class", sets=[f"{k}={v}" for k, v in sets.items()],
                      overrides={"epochs": 1})
        cfg.hparams.batch_size = batch
        torch.manual_seed(0)
        m = build_method(cfg, scen, device)
        logs: list[dict] = []
        return m, TrainContext(device, scen.augment, 0, epoch_log=logs.append, num_classes=scen.num_classes), logs

    def ours() -> int:
        m, ctx, _ = method("finetune")
        ctx.start_task(0)
        m.begin_task(TaskMeta.of(task))
        m.fit_task(task, ctx)
        return n

    bare(), ours()  # warm-up
    b, o = [], []
    for _ in range(3):  # interleaved, so drifts in machine load hit both alike
        b.append(best_of(bare, 1))
        o.append(best_of(ours, 1))
    icarl, ctx, logs = method("icarl", memory=a.memory)
    for t in scen.tasks[:2]:
        ctx.start_task(t.id)
        icarl.begin_task(TaskMeta.of(t))
        logs.clear()
        t0 = time.perf_counter()
        icarl.fit_task(t, ctx)
        step_s = time.perf_counter() - t0
    train_s = sum(r["seconds"] for r in logs if r["phase"] == "train")
    train_sps = next(r["samples_per_s"] for r in logs if r["phase"] == "train")
    print(f"machine: {machine()}")
    print(f"Fashion-MNIST IDX load (70,000 images): {load_s:.2f}s")
    print(f"class-incremental Split Fashion-MNIST, {a.per_class} train images per class, convnet_fc, batch {batch}")
    print(f"task 1 ({n} images): bare loop {max(b):8.0f} samples/s, finetune {max(o):8.0f} samples/s, "
          f"ratio {max(o) / max(b):.3f}")
    print(f"icarl task 2 (memory {a.memory}): training {train_sps:.0f} samples/s; step {step_s:.1f}s of which "
          f"{step_s - train_s:.1f}s ({(step_s - train_s) / step_s:.0%}) outside training (herding, class means)")


if __name__ == "__main__":
    main()
