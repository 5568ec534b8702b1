"""ResNets. ResNet-18/50 use torchvision's parameter names (so published state dicts
load from a local file); ResNet-32 is the CIFAR network of iCaRL/LUCIR/PODNet.

No ``fc``: heads are separate modules owned by the method. ``levels()`` returns the
stages in order (stem folded into the first, pooling into the last), so that a
dual-branch network (``nn/dual_branch.py``, AANets) can aggregate after each of them;
running the levels in sequence is exactly ``forward``.
"""

from __future__ import annotations

import torch
from torch import nn


def _bn(c: int, zero: bool = False) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    if zero:
        nn.init.zeros_(bn.weight)
    return bn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, relu_out: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes)
        self.downsample = downsample
        self.relu_out = relu_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + identity
        return self.relu(out) if self.relu_out else out


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, relu_out: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _bn(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.relu_out = relu_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out)) + identity
        return self.relu(out) if self.relu_out else out


class ShortcutA(nn.Module):
    """He et al.'s option A shortcut (iCaRL's ResNet-32): strided identity, new channels zero-padded
    on both sides (Lasagne ``PadLayer([out//4, 0, 0])`` of iCaRL's Theano code). No parameters."""

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.before = (planes - inplanes) // 2
        self.after = planes - inplanes - self.before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, self.before, self.after))


class ResNet(nn.Module):
    """torchvision layout (conv1, bn1, layer1..4) with width multiplier and an optional CIFAR stem."""

    def __init__(self, block: type, layers: list[int], in_channels: int = 3, width: float = 1.0,
                 cifar_stem: bool = False, last_relu: bool = True) -> None:
        super().__init__()
        planes = [max(1, int(p * width)) for p in (64, 128, 256, 512)]
        self.inplanes = planes[0]
        if cifar_stem:  # 3x3 stride-1 stem and no max-pool, the usual ResNet-18 for 32x32 inputs
            self.conv1 = nn.Conv2d(in_channels, planes[0], 3, 1, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, planes[0], 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = _bn(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make(block, planes[0], layers[0], 1)
        self.layer2 = self._make(block, planes[1], layers[1], 2)
        self.layer3 = self._make(block, planes[2], layers[2], 2)
        self.layer4 = self._make(block, planes[3], layers[3], 2, last_relu)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = planes[3] * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make(self, block: type, planes: int, blocks: int, stride: int, last_relu: bool = True) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False), _bn(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, down)]
        self.inplanes = planes * block.expansion
        for i in range(1, blocks):
            layers.append(block(self.inplanes, planes, relu_out=last_relu or i < blocks - 1))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def levels(self) -> list[nn.Module]:
        """Stem + max-pool + layer1, layer2, layer3, layer4 + pool (AANets' 4 ImageNet levels, manets.md 2.2)."""
        return [nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool, self.layer1), self.layer2, self.layer3,
                nn.Sequential(self.layer4, self.avgpool, nn.Flatten(1))]


class CifarResNet(nn.Module):
    """ResNet-32 for 32x32 inputs: 3 stages of 5 basic blocks, 16/32/64 channels, 64-d features.

    ``shortcut="B"``: 1x1-conv + BN downsampling, as LUCIR's and AANets' ``modified_resnet_cifar``
    (manets.md 2.1); ``"A"``: parameter-free strided identity with zero-padded channels, iCaRL's
    network. ``last_relu=False`` drops the final ReLU, which LUCIR needs for its cosine
    classifier (manets.md) and iCaRL's network does not have either.
    """

    def __init__(self, depth: int = 32, in_channels: int = 3, width: float = 1.0, last_relu: bool = True,
                 shortcut: str = "B") -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be A or B, got {shortcut!r}")
        self.shortcut = shortcut
        n = (depth - 2) // 6
        planes = [max(1, int(p * width)) for p in (16, 32, 64)]
        self.inplanes = planes[0]
        self.conv1 = nn.Conv2d(in_channels, planes[0], 3, 1, 1, bias=False)
        self.bn1 = _bn(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make(planes[0], n, 1)
        self.layer2 = self._make(planes[1], n, 2)
        self.layer3 = self._make(planes[2], n, 2, last_relu)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = planes[2]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make(self, planes: int, blocks: int, stride: int, last_relu: bool = True) -> nn.Sequential:
        down: nn.Module | None = None
        if (stride != 1 or self.inplanes != planes) and self.shortcut == "A":
            down = ShortcutA(self.inplanes, planes, stride)
        elif stride != 1 or self.inplanes != planes:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), _bn(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, down)]
        self.inplanes = planes
        for i in range(1, blocks):
            layers.append(BasicBlock(planes, planes, relu_out=last_relu or i < blocks - 1))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.avgpool(x), 1)

    def levels(self) -> list[nn.Module]:
        """Stem + stage 1, stage 2, stage 3 + pool (AANets' 3 CIFAR levels, manets.md 2.2)."""
        return [nn.Sequential(self.conv1, self.bn1, self.relu, self.layer1), self.layer2,
                nn.Sequential(self.layer3, self.avgpool, nn.Flatten(1))]
