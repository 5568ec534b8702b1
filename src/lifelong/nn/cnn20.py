"""CNN20 / SphereNet-20, the backbone of CPG's facial-informatics experiment (cpg.md 3).

20 sharable 3x3 convolutions with bias, each followed by a per-channel PReLU (slope 0.25); no
BatchNorm. Four stages, each opened by a stride-2 conv and followed by 1, 2, 4 and 1 residual
pairs. A 112x112 face becomes 512 x 7 x 7 = 25,088 features (flattened, as SphereFace does).
The face-verification embedding (Linear 25088->512 + A-Softmax) is a task head, not part of it.
"""

from __future__ import annotations

import torch
from torch import nn


class _Pair(nn.Module):
    """x + PReLU(conv(PReLU(conv(x)))): one residual pair of SphereNet."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1)
        self.relu1 = nn.PReLU(c, init=0.25)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1)
        self.relu2 = nn.PReLU(c, init=0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.relu2(self.conv2(self.relu1(self.conv1(x))))


class CNN20(nn.Module):
    def __init__(self, in_channels: int = 3, width: float = 1.0, image_size: int = 112) -> None:
        super().__init__()
        widths = [int(c * width) for c in (64, 128, 256, 512)]
        pairs = [1, 2, 4, 1]
        layers: list[nn.Module] = []
        c = in_channels
        for w, n in zip(widths, pairs):
            layers += [nn.Conv2d(c, w, 3, 2, 1), nn.PReLU(w, init=0.25)]
            layers += [_Pair(w) for _ in range(n)]
            c = w
        self.features = nn.Sequential(*layers, nn.Flatten())
        side = image_size
        for _ in range(4):
            side = (side + 1) // 2  # stride-2, padding-1, 3x3 convolutions
        self.out_dim = c * side * side
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
