"""Small backbones for the digits and MNIST-family benchmarks: a conv net (two layouts) and an MLP."""

from __future__ import annotations

import torch
from torch import nn


class SmallConvNet(nn.Module):
    """3x3 conv-BN-ReLU layers with 2x2 max-pools, then global average pool or a hidden FC layer.

    Default (``convnet``): three layers (32, 64, 128), one pool after the second, global average
    pool: ~98% on 10-way 8x8 digits in seconds on a CPU. ``convnet_fc`` for 28x28 MNIST-family
    images: two layers (32, 64), a pool after each, FC 128 on the 7x7 maps (the classic small
    MNIST network, as in PyTorch's MNIST example, with BatchNorm): cheap at 28x28 on a CPU.
    """

    def __init__(self, in_channels: int = 1, width: float = 1.0, channels: tuple[int, ...] = (32, 64, 128),
                 pools: tuple[int, ...] = (1,), fc: int | None = None, image_size: int | None = None) -> None:
        super().__init__()
        widths = [max(1, int(c * width)) for c in channels]
        layers: list[nn.Module] = []
        prev = in_channels
        for i, c in enumerate(widths):
            layers += [nn.Conv2d(prev, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i in pools:
                layers.append(nn.MaxPool2d(2))
            prev = c
        if fc is None:
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            self.out_dim = prev
        else:
            if image_size is None:
                raise ValueError("a convnet with an FC layer needs the input image_size")
            side = image_size // 2 ** len(pools)
            hidden = max(1, int(fc * width))
            layers += [nn.Flatten(), nn.Linear(prev * side * side, hidden), nn.ReLU(inplace=True)]
            self.out_dim = hidden
        self.features = nn.Sequential(*layers)

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
