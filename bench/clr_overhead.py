"""Cost of CLR's reprogramming layers: training and inference samples/s against the plain backbone.

Same backbone (seeded identically), same synthetic batches, same hand-written Adam step. "plain"
fine-tunes the whole network (what CLR replaces); "CLR" trains the active task's depthwise
kernels, BatchNorms and head over the frozen convs (``nn/reprogram.py``, CLR or CLR-Full).
Inference compares the unfolded layers (conv, then depthwise 3x3), the folded ones (one conv of
kernel k+2, or k+4 after a stride-2 conv, plus the exact border strips) and the plain network.

    python bench/clr_overhead.py [--backbone resnet18] [--size 64] [--batch 16] [--steps 4] [--full]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from common import machine
from lifelong.nn.backbones import BackboneConfig, build_backbone
from lifelong.nn.reprogram import Reprogrammed


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
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--full", action="store_true", help="CLR-Full (every conv, 1x1 included)")
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(a.batch, 3, a.size, a.size, generator=g), torch.randint(0, 10, (a.batch,), generator=g))
               for _ in range(a.steps)]

    def make() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_backbone(BackboneConfig(name=a.backbone, cifar_stem=False), 3, a.size)

    plain = make()
    head = torch.nn.Linear(plain.out_dim, 10)
    opt = torch.optim.Adam(list(plain.parameters()) + list(head.parameters()), lr=1e-3)

    def plain_step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(head(plain(x)), y).backward()
        opt.step()

    rp = Reprogrammed(make(), cover_1x1=a.full)
    rp.add_task()
    rp_head = torch.nn.Linear(rp.out_dim, 10)
    params = rp.kernels(0) + [p for m in rp.task_bns(0) for p in m.parameters()] + list(rp_head.parameters())
    for p in params:
        p.requires_grad_(True)
    rp_opt = torch.optim.Adam(params, lr=1e-3)

    def clr_step(x: torch.Tensor, y: torch.Tensor) -> None:
        rp_opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(rp_head(rp(x)), y) + 1e-5 * sum(p.norm() for p in params)
        loss.backward()
        rp_opt.step()

    plain.train(), rp.train()
    train_plain = samples_per_s(plain_step, batches)
    train_clr = samples_per_s(clr_step, batches)

    plain.eval(), rp.eval()
    with torch.no_grad():
        for k in rp.kernels(0):
            k.add_(torch.randn(k.shape, generator=g) * 0.05)  # a trained-looking kernel, not the identity
        infer = lambda net: samples_per_s(lambda x, y: net(x), batches)  # noqa: E731
        eval_plain = infer(plain)
        eval_unfolded = infer(rp)
        rp.set_fold(True)
        rp(batches[0][0])  # fold once (cached per task)
        eval_folded = infer(rp)

    kind = "CLR-Full" if a.full else "CLR"
    print(f"{a.backbone}, {a.size}x{a.size}, batch {a.batch}, {a.steps} steps, best of 3; {machine()}")
    print(f"train samples/s: plain {train_plain:.1f}, {kind} {train_clr:.1f}, ratio {kind}/plain {train_clr / train_plain:.2f}")
    print(f"eval samples/s: plain {eval_plain:.1f}, unfolded {eval_unfolded:.1f}, folded {eval_folded:.1f}; "
          f"unfolded/plain {eval_unfolded / eval_plain:.2f}, folded/unfolded {eval_folded / eval_unfolded:.2f}")


if __name__ == "__main__":
    main()
