"""Run under torchrun by tests/test_distributed.py: the multi-process mechanisms on a toy network.

Each rank computes its shard the way the training loop does and saves, to ``OUT.<rank>``, what
it ended with next to the one-process reference it computed itself (plain BatchNorm, the whole
batch). The test compares them; nothing is asserted here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.engine.distributed import grad_leaves, init_world, reduce_gradients, shutdown_world, snapshot_grads
from lifelong.nn.sync_batchnorm import replicas, sync_batchnorm


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
        self.head_a = nn.Linear(4 * 6 * 6, 5)
        self.head_b = nn.Linear(4 * 6 * 6, 5)  # used by the rows with task 1 only
        self.unused = nn.Parameter(torch.ones(3))  # never in the forward: its grad must stay None
        self.alpha = nn.Parameter(torch.full((1,), 0.5))  # carries a gradient from an earlier step

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        h = self.body(x) * self.alpha
        return torch.where((task == 1)[:, None], self.head_b(h), self.head_a(h))


def step(net: Toy, x: torch.Tensor, y: torch.Tensor, task: torch.Tensor, weight: float) -> None:
    (F.cross_entropy(net(x, task), y) * weight).backward()


def main(out: str) -> None:
    world = init_world("cpu")
    g = torch.Generator().manual_seed(1)
    results: dict[str, object] = {"rank": world.rank, "size": world.size}
    for n in (10, 7, 1):  # a shard per rank; uneven shards; a batch smaller than the world
        x = torch.randn(n, 3, 8, 8, generator=g)
        y = torch.randint(0, 5, (n,), generator=g)
        task = torch.zeros(n, dtype=torch.long)
        task[-1] = 1  # only the last rank's shard reaches head_b
        earlier = torch.full((1,), 0.25)

        ref = Toy().train()
        ref.alpha.grad = earlier.clone()
        step(ref, x, y, task, 1.0)

        net = Toy().train()
        sync_batchnorm(net)
        net.alpha.grad = earlier.clone()
        leaves = grad_leaves(net.parameters())
        before = snapshot_grads(leaves)
        start, stop = world.part(n)
        with replicas(world.size if n < world.size else 1):
            step(net, x[start:stop], y[start:stop], task[start:stop], world.weight(n))
        reduce_gradients(world, leaves, before)
        with torch.no_grad():
            local = net.eval()(x[start:stop], task[start:stop])
            results[f"n{n}"] = {
                "grads": {k: None if p.grad is None else p.grad.clone() for k, p in net.named_parameters()},
                "ref_grads": {k: None if p.grad is None else p.grad.clone() for k, p in ref.named_parameters()},
                "buffers": {k: b.clone() for k, b in net.named_buffers()},
                "ref_buffers": {k: b.clone() for k, b in ref.named_buffers()},
                "gathered": world.gather(local, n),
                "ref_outputs": ref.eval()(x, task),
            }
    results["disagreeing"] = world.disagreeing({"same": "x", "own": str(world.rank)})
    results["gathered_order"] = {n: world.gather(torch.arange(*world.part(n)), n) for n in (0, 1, 2, 5, 9)}
    torch.save(results, f"{out}.{world.rank}")
    shutdown_world()


def diverge(out: str) -> None:
    """A planted sharing bug: evaluation not gathered, so each rank scores only its own shard of
    the test set. The runner must stop before the task is checkpointed, naming what differs."""
    from lifelong.config import resolve
    from lifelong.engine.distributed import World
    from lifelong.engine.runner import run_job
    from lifelong.errors import DistributedError

    World.gather = lambda self, local, n: local  # type: ignore[method-assign]
    cfg = resolve("finetune", "digits", "class", overrides={"tasks": 2, "epochs": 1, "device": "cpu"})
    world = init_world("cpu")
    try:
        run_job(cfg, Path(out), progress=False)
        message = "finished"
    except DistributedError as exc:
        message = str(exc)
    torch.save({"message": message}, f"{out}.{world.rank}")
    shutdown_world()


if __name__ == "__main__":
    (diverge if sys.argv[1:2] == ["diverge"] else main)(sys.argv[-1])
