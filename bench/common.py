"""Shared set-up for the benchmarks: synthetic CIFAR-sized uint8 data and timing."""

from __future__ import annotations

import platform
import time
from typing import Callable

import torch

from lifelong.data.augment import AugmentSpec
from lifelong.data.imageset import ImageSet
from lifelong.data.scenario import Task


def cifar_like(n: int, classes: int = 10, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                    torch.randint(0, classes, (n,), generator=g), class_names=[str(c) for c in range(classes)])


def one_task(data: ImageSet) -> Task:
    empty = data.subset(torch.zeros(0, dtype=torch.long))
    return Task(0, "bench", list(range(len(data.class_names))), data.class_names, data, empty, empty)


CIFAR_SPEC = AugmentSpec(size=32, crop_padding=4, flip=True, mean=(0.507, 0.487, 0.441), std=(0.267, 0.256, 0.276))


def best_of(fn: Callable[[], int], repeats: int = 3) -> float:
    """Best samples/s over ``repeats`` calls of ``fn`` (which returns the number of samples it processed)."""
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - t0))
    return best


def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def lifelong_cmd(args: list[str], nproc: int = 1) -> list[str]:
    """``lifelong ARGS`` in one process, or under torchrun with ``nproc`` local gloo/NCCL processes."""
    import sys

    if nproc == 1:
        return [sys.executable, "-m", "lifelong", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "lifelong", *args]
