"""Training samples/s of AANets' dual-branch network against the single-branch backbone.

Same backbone (seeded identically), same synthetic CIFAR-sized data, batch size, SGD step,
batched augmentation and shared loop (``TrainContext.fit``); the dual network is
``DualBranchNet(stable_copy(net), plastic_copy(net))`` as the method builds it in phase 1
(frozen weights times scales + a free plastic branch, fp32 aggregation after every level).
The paper's cost is about 2x (two backbones per forward, manets.md 6.11); teacher forwards
and the alpha pass come on top in a real step and are not timed here.

    python bench/dual_branch.py [--backbone resnet32] [--n 384] [--batch 128] [--repeats 2]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common import CIFAR_SPEC, best_of, cifar_like, machine
from lifelong.engine.loop import Batch, Phase, StepOutput, TrainContext
from lifelong.engine.optim import OptimConfig
from lifelong.nn.backbones import BackboneConfig, build_backbone
from lifelong.nn.cosine import CosineIncrementalHead
from lifelong.nn.dual_branch import DualBranchNet, plastic_copy, stable_copy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="resnet32")
    ap.add_argument("--n", type=int, default=384)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    data = cifar_like(a.n)
    ctx = TrainContext(torch.device("cpu"), CIFAR_SPEC, seed=0)

    def build(dual: bool) -> tuple[torch.nn.Module, CosineIncrementalHead]:
        torch.manual_seed(0)
        net = build_backbone(BackboneConfig(a.backbone, last_relu=False), 3, 32)
        if dual:
            net = DualBranchNet(stable_copy(net), plastic_copy(net))
        head = CosineIncrementalHead(net.out_dim)
        head.add(10)
        return net, head

    def train(dual: bool) -> int:
        net, head = build(dual)
        params = net.branch_parameters() if dual else list(net.parameters())

        def loss(b: Batch) -> StepOutput:
            out = head(net(b.x))
            return StepOutput(F.cross_entropy(out, b.y), out)

        ctx.fit(Phase("bench", data, params + list(head.parameters()), 1, OptimConfig(lr=0.1, weight_decay=5e-4), loss,
                      a.batch, modules=[net, head]))
        return a.n

    train(False), train(True)  # warm-up
    single, dual = [], []
    for _ in range(a.repeats):  # interleaved, so load drift hits both alike
        single.append(best_of(lambda: train(False), 1))
        dual.append(best_of(lambda: train(True), 1))
    s, d = max(single), max(dual)
    n_single = sum(p.numel() for p in build(False)[0].parameters())
    n_dual = sum(p.numel() for p in build(True)[0].parameters())
    print(f"machine: {machine()}")
    print(f"backbone {a.backbone}, {a.n} images 32x32, batch {a.batch}, 1 epoch, best of {a.repeats}")
    print(f"single branch : {s:8.1f} samples/s  ({n_single:,} parameters)")
    print(f"dual branch   : {d:8.1f} samples/s  ({n_dual:,} parameters, {n_dual - 2 * n_single:,} beyond 2x: scales + alphas)")
    print(f"cost (single/dual time ratio): {s / d:.2f}x   throughput ratio dual/single: {d / s:.3f}")


if __name__ == "__main__":
    main()
