"""VGG-16 with BatchNorm, CPG's CIFAR variant (cpg.md 3): bias-free convs, no dropout,
two 4096-wide FC layers with bias, channel widths ``int(c * width)``."""

from __future__ import annotations

import torch
from torch import nn

CFG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16BN(nn.Module):
    def __init__(self, in_channels: int = 3, width: float = 1.0, image_size: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in CFG_D:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                out = int(int(v) * width)
                layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                c = out
        self.features = nn.Sequential(*layers)
        spatial = max(1, image_size // 32)
        hidden = int(4096 * width)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c * spatial * spatial, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden), nn.ReLU(inplace=True)
        )
        self.out_dim = hidden
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def levels(self) -> list[nn.Module]:
        """The stages in order (progressive nets' laterals): the five conv blocks, each ending at its
        max-pool, then the classifier; running them in sequence is exactly ``forward``."""
        blocks: list[nn.Module] = []
        current: list[nn.Module] = []
        for m in self.features:
            current.append(m)
            if isinstance(m, nn.MaxPool2d):
                blocks.append(nn.Sequential(*current))
                current = []
        return blocks + ([nn.Sequential(*current)] if current else []) + [self.classifier]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
