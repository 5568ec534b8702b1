"""Cost of CPG's masked backbone against the plain backbone: training (and inference) samples/s.

Same backbone (seeded identically), same synthetic CIFAR-sized batch, same hand-written step;
the only difference is the model. "masked" is task 2 of a stream whose task 1 owns half of
every layer (the other half was pruned and handed over to task 2): forward through
``MaskedBackbone`` (functional call with ``W·own + W_earlier·bin(pick)`` effective weights),
weight decay on the task's own weights only; with picking (CPG: a real-valued mask per weight,
straight-through binariser, Adam) and without (PackNet: every earlier weight reused). Inference compares
a finished task's stored path (cropped, cached effective weights) with the plain network.

    python bench/masked_overhead.py [--backbone resnet32] [--batch 32] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from common import cifar_like, machine
from lifelong.methods.pruning import prune_layerwise
from lifelong.nn.backbones import BackboneConfig, build_backbone
from lifelong.nn.masked import MaskedBackbone


def samples_per_s(step, batches: list[tuple[torch.Tensor, torch.Tensor]], repeats: int = 3) -> float:
    step(*batches[0])  # warm-up
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x, y in batches:
            step(x, y)
        best = max(best, sum(len(y) for _, y in batches) / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="resnet32")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=32)
    a = ap.parse_args()
    torch.use_deterministic_algorithms(True, warn_only=True)
    data = cifar_like(a.batch * a.steps)
    x_all = (data.images.float() / 255.0 - 0.5) / 0.25
    if a.size != 32:
        x_all = F.interpolate(x_all, size=a.size)
    batches = list(zip(x_all.split(a.batch), data.labels.split(a.batch)))

    def make(width: float = 1.0) -> torch.nn.Module:
        torch.manual_seed(0)
        return build_backbone(BackboneConfig(name=a.backbone, width=width), 3, a.size)

    # plain: backbone + head, SGD Nesterov (CPG's finetune optimiser)
    net = make()
    head = torch.nn.Linear(net.out_dim, 10)
    opt = torch.optim.SGD(list(net.parameters()) + list(head.parameters()), lr=1e-3, momentum=0.9, nesterov=True)
    net.train()

    def plain_step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(head(net(x)), y).backward()
        opt.step()

    # masked: task 2 over a task 1 that kept half of each layer; CPG picks (Adam on a real-valued
    # mask per weight), PackNet reuses every earlier weight without a mask
    def masked(picking: bool):
        mb = MaskedBackbone(make(), make)
        mb.claim_free(0)
        prune_layerwise(mb, 0, 0.5)
        mb.finish_task(0)
        mb.claim_free(1)
        mhead = torch.nn.Linear(mb.out_dim, 10)
        own = mb.owned_weights(1) + mb.private_parameters() + list(mhead.parameters())
        mopt = torch.optim.SGD(own, lr=1e-3, momentum=0.9, nesterov=True)
        popt = torch.optim.Adam(list(mb.start_picking(1)), lr=5e-4) if picking else None
        mb.train()

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            mopt.zero_grad(set_to_none=True)
            if popt is not None:
                popt.zero_grad(set_to_none=True)
            F.cross_entropy(mhead(mb(x, 1)), y).backward()
            with torch.no_grad():  # weight decay on the task's own weights only (IsolationMethod.decay_hook)
                for i, name in enumerate(mb.layers):
                    w = mb.weight(name)
                    if w.grad is not None:
                        w.grad.addcmul_(w, mb.own_mask(1, i), value=4e-5)
            mopt.step()
            if popt is not None:
                popt.step()

        return mb, step

    mb, cpg_step = masked(True)
    _, packnet_step = masked(False)

    plain = samples_per_s(plain_step, batches)
    cpg = samples_per_s(cpg_step, batches)
    packnet = samples_per_s(packnet_step, batches)

    net.eval()
    mb.eval()
    with torch.no_grad():
        plain_eval = samples_per_s(lambda x, y: net(x), batches)
        stored_eval = samples_per_s(lambda x, y: mb(x, 0), batches)
    print(f"machine: {machine()}")
    print(f"backbone {a.backbone} ({sum(mb.weight(n).numel() for n in mb.layers):,} maskable weights), "
          f"batch {a.batch}, {a.size}px, {a.steps} steps, best of 3")
    print(f"train samples/s: plain {plain:.0f}, masked with picking (CPG task 2) {cpg:.0f}, ratio {cpg / plain:.3f}; "
          f"masked without picking (PackNet task 2) {packnet:.0f}, ratio {packnet / plain:.3f}")
    print(f"eval  samples/s: plain {plain_eval:.0f}, masked (stored task 1) {stored_eval:.0f}, ratio {stored_eval / plain_eval:.3f}")


if __name__ == "__main__":
    main()
