"""Small backbones for the embedded digits benchmarks: a conv net and an MLP."""

from __future__ import annotations

import torch
from torch import nn


class SmallConvNet(nn.Module):
    """Three 3x3 conv-BN-ReLU layers (32, 64, 128), one 2x2 pool, global average pool.

    Big enough to reach ~98% on 10-way digits, small enough for seconds per run on a CPU.
    """

    def __init__(self, in_channels: int = 1, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = (max(1, int(c * width)) for c in (32, 64, 128))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1, bias=False), nn.BatchNorm2d(c3), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.out_dim = c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def levels(self) -> list[nn.Module]:
        """One level per conv layer (with its BN, ReLU and pool), the pooling/FC tail folded into the
        last: the aggregation points of a dual-branch network (``nn/dual_branch.py``, AANets)."""
        starts = [i for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)][1:]
        return [self.features[a:b] for a, b in zip([0] + starts, starts + [len(self.features)])]


class MLP(nn.Module):
    """Two hidden ReLU layers on flattened pixels; the usual permuted-MNIST network."""

    def __init__(self, in_features: int, hidden: int = 256, width: float = 1.0) -> None:
        super().__init__()
        h = max(1, int(hidden * width))
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(in_features, h), nn.ReLU(inplace=True), nn.Linear(h, h), nn.ReLU(inplace=True))
        self.out_dim = h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def levels(self) -> list[nn.Module]:
        """The two hidden layers (flattening folded into the first)."""
        return [self.features[0:3], self.features[3:5]]
