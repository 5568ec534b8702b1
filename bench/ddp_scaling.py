"""Training throughput with 1 and N processes under torchrun: ResNet-32 on synthetic CIFAR-size data.

Each configuration runs the shared loop (``TrainContext.fit``) on 32x32 RGB images with CIFAR
augmentation, batch 128 (the global batch: each of N ranks computes 128/N rows), one warm-up
epoch, then reports the next epoch's samples/s summed over ranks. On the CPU each process gets
``--threads`` torch threads (gloo), and two more rows put the N processes beside BatchNorm per
shard (``sync_bn: false``) and one process with N times the threads; with ``--device cuda`` one
GPU per process (NCCL), and ``--compare-precision`` adds bf16 + channels_last against fp32. Ratios are to the first row, all
measured by this one invocation. Nothing here asserts anything.

    python bench/ddp_scaling.py [--nproc 1 2] [--images 2048] [--device cpu]
    python bench/ddp_scaling.py --device cuda --nproc 1 --compare-precision
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def worker(a: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F

    from common import CIFAR_SPEC, cifar_like

    from lifelong.engine.distributed import init_world
    from lifelong.engine.loop import Phase, StepOutput, TrainContext
    from lifelong.engine.optim import OptimConfig
    from lifelong.nn.backbones import BackboneConfig, build_backbone

    world = init_world(a.device)
    torch.set_num_threads(a.threads)
    device = torch.device("cuda", world.local_rank) if a.device == "cuda" else torch.device("cpu")
    torch.manual_seed(0)
    net = torch.nn.Sequential(build_backbone(BackboneConfig("resnet32"), 3, 32), torch.nn.LazyLinear(100)).to(device)
    net(torch.zeros(2, 3, 32, 32, device=device))  # materialise the lazy head
    ctx = TrainContext(device, CIFAR_SPEC, seed=0, precision=a.precision, world=world, channels_last=a.channels_last,
                       sync_bn=not a.no_sync_bn)
    ctx.model = net
    data = cifar_like(a.images, classes=100)
    loss = lambda b: StepOutput(F.cross_entropy(net(b.x), b.y))
    hist = ctx.fit(Phase("bench", data, net.parameters(), 2, OptimConfig("sgd", lr=0.1, momentum=0.9), loss,
                         a.batch, modules=[net]))
    if world.main:
        print(json.dumps({"samples_per_s": hist[-1].samples_per_s, "seconds": hist[-1].seconds}))


def launch(a: argparse.Namespace, nproc: int, threads: int, precision: str, channels_last: bool, sync_bn: bool) -> dict:
    args = [str(Path(__file__).resolve()), "--worker", "--device", a.device, "--images", str(a.images), "--batch",
            str(a.batch), "--threads", str(threads), "--precision", precision]
    if not sync_bn:
        args.append("--no-sync-bn")
    if channels_last:
        args.append("--channels-last")
    cmd = [sys.executable, *args] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                      "--nproc_per_node", str(nproc), *args]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--precision", default="32")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--no-sync-bn", action="store_true", help="BatchNorm per shard (sync_bn: false)")
    ap.add_argument("--compare-precision", action="store_true", help="CUDA: also bf16 + channels_last per nproc")
    a = ap.parse_args()
    if a.worker:
        worker(a)
        return
    import platform

    import torch

    print(f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, device {a.device}, "
          f"{a.images} images, global batch {a.batch}, {a.threads} thread(s) per process")
    # (processes, threads each, precision, channels_last, sync_bn)
    rows = [(n, a.threads, a.precision, a.channels_last, not a.no_sync_bn) for n in a.nproc]
    if a.device == "cpu" and max(a.nproc) > 1:
        n = max(a.nproc)
        rows += [(n, a.threads, a.precision, a.channels_last, False), (1, n * a.threads, a.precision, False, True)]
    if a.compare_precision:
        rows += [(n, a.threads, "bf16", True, not a.no_sync_bn) for n in a.nproc]
    base = None
    print("| processes | threads each | precision | channels_last | sync_bn | samples/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for n, threads, precision, cl, sync in rows:
        r = launch(a, n, threads, precision, cl, sync)
        base = base or r["samples_per_s"]
        print(f"| {n} | {threads} | {precision} | {cl} | {sync} | {r['samples_per_s']:.0f} | {r['samples_per_s'] / base:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
