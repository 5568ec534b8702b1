"""Cost of one LASEM training step (all 2^L transfer configurations) against one HPS step.

LASEM's E- and M-steps need the features of every configuration of which layers are shared.
Run naively that is L * 2^L layer evaluations; the prefix tree (``TransferNet.tree``) shares every
common prefix, sum over l of 2^l. Here one forward + backward of a CIFAR-size batch through the
LASEM paper's 4-conv network (``lasem_cnn``, cifar4), as: one fixed HPS configuration, the tree, the
naive evaluation. Samples/s, ratio to the HPS step, in one process. Nothing is asserted.

    python bench/lasem_step.py [--batch 32] [--kind hps|tf|dfcnn]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import best_of, machine  # noqa: E402

from lifelong.nn.lasem_cnn import lasem_spec  # noqa: E402
from lifelong.nn.transfer import TransferNet, config_of  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--kind", choices=["hps", "tf", "dfcnn"], default="hps")
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    torch.manual_seed(0)
    spec = lasem_spec("cifar4", 3, 32)
    net = TransferNet(spec, a.kind)
    L = spec.num_layers
    for t in range(2):
        net.add_task(t, 10, [True] * L, [a.kind != "hps"] * L)
    net.train()
    x = torch.randn(a.batch, 3, 32, 32)
    y = torch.randint(0, 10, (a.batch,))
    C = 2 ** L

    def hps_step() -> int:
        for _ in range(a.steps):
            net.zero_grad(set_to_none=True)
            feats = net.features(x, 1, config_of(C - 2, [1] * L))
            torch.nn.functional.cross_entropy(net.head(1, feats), y).backward()
        return a.steps * a.batch

    def all_configs(fn) -> int:
        for _ in range(a.steps):
            net.zero_grad(set_to_none=True)
            feats = fn(x, 1)  # (2^L, N, D)
            logits = net.head(1, feats.flatten(0, 1))
            torch.nn.functional.cross_entropy(logits, y.repeat(C)).backward()
        return a.steps * a.batch

    rows = [("one HPS configuration", hps_step), (f"LASEM, prefix tree ({2 ** (L + 1) - 2} layer evaluations)",
                                                  lambda: all_configs(net.tree)),
            (f"LASEM, naive ({L * 2 ** L} layer evaluations)", lambda: all_configs(net.naive_tree))]
    print(f"# {machine()}; lasem_cnn cifar4 ({L} convs, {C} configurations), {a.kind}, batch {a.batch}")
    print("| step | samples/s | time ratio to one HPS step |")
    print("|---|---|---|")
    base = None
    for name, fn in rows:
        fn()  # warm-up
        rate = best_of(fn)
        base = base or rate
        print(f"| {name} | {rate:.0f} | {base / rate:.2f} |", flush=True)


if __name__ == "__main__":
    main()
