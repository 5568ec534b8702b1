"""BatchNorm over the global batch when a run spans several processes, for every backbone.

A rank holds a shard of each training batch; plain BatchNorm would normalise with the shard's
statistics and a 2-process run would train a different network from a 1-process one. Here a
training-mode BatchNorm sums its per-channel statistics over ranks (two all-reduces: the sum, then
the squared deviations, as the two-pass variance torch computes) through an all-reduce whose backward
all-reduces the gradients, so the backward is the global batch's too, and running statistics are updated with
the global mean and unbiased variance: every rank keeps identical buffers.

``torch.nn.SyncBatchNorm`` does the same on CUDA only (it refuses CPU tensors, so gloo runs could
not use it). ``sync_batchnorm(root)`` swaps each BatchNorm's class for a subclass (same parameters,
buffers and state-dict keys; ``isinstance`` checks still hold), so networks grown or built by a
method mid-run are covered by calling it again. Outside a multi-process training step the
subclass is plain BatchNorm.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

# How many ranks hold the same rows in the current step (1: disjoint shards; the world size when a
# batch smaller than the world is computed whole everywhere): divides the summed count.
_REPLICAS: ContextVar[int] = ContextVar("bn_replicas", default=1)


@contextlib.contextmanager
def replicas(k: int) -> Iterator[None]:
    token = _REPLICAS.set(k)
    try:
        yield
    finally:
        _REPLICAS.reset(token)


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward is the all-reduce of the incoming gradients: each rank's loss
    depends on every rank's rows through the shared statistics."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def _synced(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    dims = [0, *range(2, x.dim())]
    shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
    x32 = x.float()
    local = torch.cat([x32.sum(dims), x32.new_tensor([x.numel() // x.shape[1]])])
    total = _SumOverRanks.apply(local)
    n = total[-1] / _REPLICAS.get()
    mean = total[:-1] / total[-1]
    centred = x32 - mean.view(shape)
    var = _SumOverRanks.apply((centred * centred).sum(dims)) / total[-1]
    out = centred * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        out = out * bn.weight.view(shape) + bn.bias.view(shape)
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            f = (1.0 / float(bn.num_batches_tracked)) if bn.momentum is None else bn.momentum
            bn.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
            bn.running_var.mul_(1 - f).add_(var.detach() * (n / (n - 1).clamp(min=1)), alpha=f)
    return out.to(x.dtype)


class _Synced:
    """Mixin: a training-mode forward in a multi-process run uses the global batch's statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:  # type: ignore[attr-defined]
            return _synced(self, x)  # type: ignore[arg-type]
        return super().forward(x)  # type: ignore[misc]


class SyncedBatchNorm1d(_Synced, nn.BatchNorm1d):
    pass


class SyncedBatchNorm2d(_Synced, nn.BatchNorm2d):
    pass


class SyncedBatchNorm3d(_Synced, nn.BatchNorm3d):
    pass


_SYNCED = {nn.BatchNorm1d: SyncedBatchNorm1d, nn.BatchNorm2d: SyncedBatchNorm2d, nn.BatchNorm3d: SyncedBatchNorm3d}


def sync_batchnorm(root: nn.Module) -> int:
    """Make every BatchNorm under ``root`` normalise over the global batch; returns how many changed."""
    changed = 0
    for m in root.modules():
        cls = _SYNCED.get(type(m))
        if cls is not None:
            m.__class__ = cls
            changed += 1
    return changed
