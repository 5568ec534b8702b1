"""BiC's ImageNet network: pre-activation ResNet-18 (ResNet v2, TF official models r1), bic.md 2.

conv7x7/2 (64, no bias) -> maxpool 3x3/2 -> 4 stages x 2 blocks (64/128/256/512, strides
1/2/2/2) -> final BN + ReLU -> global average pool -> 512-d features. Each block is
BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut; the first block of EVERY stage (stage 1
included) has a 1x1 projection shortcut applied to the pre-activated input: 21 convs and
17 BN layers, as in BiC's checkpoint. Convs use TF's variance-scaling init (fan_in, scale 1,
truncated normal).

Deviation: BatchNorm keeps PyTorch's momentum 0.1; TF's decay 0.997 (momentum 0.003) leaves
running statistics unconverged in short runs, and over BiC's ~5,000 iterations per step both
settle. ``cifar_stem`` (3x3 stride-1 stem, no max-pool) is for small inputs, as ``resnet18``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _tf_variance_scaling_(w: torch.Tensor) -> None:
    """``tf.variance_scaling_initializer(scale=1, mode='fan_in', distribution='truncated_normal')``."""
    fan_in = w.shape[1] * w[0, 0].numel()
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # std of a unit normal truncated at +-2
    nn.init.trunc_normal_(w, 0.0, std, -2 * std, 2 * std)


class PreActBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int, projection: bool) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut = nn.Conv2d(inplanes, planes, 1, stride, bias=False) if projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 features (``out_dim`` 512 x width); no classifier (heads are separate)."""

    def __init__(self, in_channels: int = 3, width: float = 1.0, cifar_stem: bool = False, last_relu: bool = True) -> None:
        super().__init__()
        planes = [max(1, int(p * width)) for p in (64, 128, 256, 512)]
        if cifar_stem:
            self.conv1 = nn.Conv2d(in_channels, planes[0], 3, 1, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, planes[0], 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = []
        inplanes = planes[0]
        for i, p in enumerate(planes):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(PreActBlock(inplanes, p, stride, projection=True), PreActBlock(p, p, 1, projection=False)))
            inplanes = p
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn_final = nn.BatchNorm2d(inplanes)
        self.last_relu = last_relu
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _tf_variance_scaling_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn_final(x)
        if self.last_relu:
            x = torch.relu(x)
        return torch.flatten(self.avgpool(x), 1)
