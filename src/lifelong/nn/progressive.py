"""Progressive neural networks (Rusu et al. 2016) over any registered backbone (clr.md 6).

A ``Column`` is one backbone cut into *levels* (its stages in order, so that applying them one
after the other is the backbone's forward): the backbone's own ``levels()`` when it has one,
else a derivation here for the registry's ResNets (AANets' levels: stem + stage 1, stage 2, ...,
last stage + pooling) and for ``nn.Sequential`` feature stacks (one level per conv/linear layer
with what follows it, e.g. the small convnet and the MLP). A level that is an ``nn.Sequential``
ending in activations/pooling/flatten/dropout is split there (``pre`` then ``tail``), so
laterals are added to the pre-activation as in LASEM (clr.md 6.3); other levels (ResNet stages)
get them on their output.

``ProgressiveNet`` holds the columns and, for column k, one ``Adapter`` per (receiving level l,
earlier column j) as registered ``nn.ModuleList``s (``laterals[k][l][j]``), so checkpoints carry
them. The adapter is the paper's non-linear one as LASEM builds it (clr.md 6.1, 6.3):
``U(relu(V(alpha_j * h_j^{l-1})))`` with alpha a learned scalar, V a 1x1 conv (linear for flat
features) with bias down to n = floor(C_{l-1} / (s * k)) channels, k = j's column count + 1
(= k here, 1-based), s the ``reduction``, and U a bias-free conv with the receiving level's first
kernel size and the stride that maps the source's spatial size onto the receiving level's
(adaptive average pooling first when no integer stride does, e.g. onto a pooled 1x1 map).
The first level never receives laterals.

Column k's forward runs columns 0..k on the same input; earlier columns run without gradient
(they are frozen: the method keeps them in eval mode and out of the optimiser), so their
outputs, and every earlier task's logits, stay bit-identical.

LASEM's base network is the registry's ``lasem_cnn`` (``nn/lasem_cnn.py``); its levels are its conv
layers (SAME conv + bias -> ReLU -> SAME max-pool, laterals on the conv's output) and the FC stack.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .lasem_cnn import LasemCNN, conv_same, pool_same
from .resnet import CifarResNet, ResNet

class SameConv(nn.Module):
    """A LASEM ``PlainConv`` as a module: stride-1 conv with TF SAME padding, bias."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_same(x, self.conv.weight, self.conv.bias)


class SamePool(nn.Module):
    """Max-pool kernel = stride = p with TF SAME padding (identity for p = 1)."""

    def __init__(self, p: int) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_same(x, self.p)


TAIL = (SamePool, nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.MaxPool2d, nn.AvgPool2d,
        nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)
WEIGHTED = (nn.Conv2d, nn.Linear)


def split_at_weights(seq: nn.Sequential) -> list[nn.Module]:
    """One level per conv/linear layer of a feature stack, with the modules that follow it."""
    levels: list[list[nn.Module]] = []
    for m in seq:
        if isinstance(m, WEIGHTED) or not levels:
            levels.append([m])
        else:
            levels[-1].append(m)
    return [nn.Sequential(*ms) for ms in levels]


def backbone_levels(net: nn.Module) -> list[nn.Module]:
    """The backbone's stages in order (see the module docstring)."""
    if callable(getattr(net, "levels", None)):
        return list(net.levels())  # type: ignore[operator]
    if isinstance(net, ResNet):
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        return [stem, net.layer2, net.layer3, nn.Sequential(net.layer4, net.avgpool, nn.Flatten())]
    if isinstance(net, LasemCNN):
        convs = [nn.Sequential(SameConv(c), nn.ReLU(), SamePool(p)) for c, p in zip(net.convs, net.spec.pools)]
        return convs + [nn.Sequential(nn.Flatten(1), net.fc)]
    if isinstance(net, CifarResNet):
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.layer1)
        return [stem, net.layer2, nn.Sequential(net.layer3, net.avgpool, nn.Flatten())]
    features = getattr(net, "features", None)
    if isinstance(features, nn.Sequential):
        return split_at_weights(features)
    raise ConfigError(f"backbone {type(net).__name__} has no levels() (its stages in order), which progressive nets need")


class Level(nn.Module):
    """One stage: ``pre`` (where laterals are added) then ``tail`` (trailing activations, pooling)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        mods = list(module) if isinstance(module, nn.Sequential) else [module]
        cut = len(mods)
        while cut > 1 and isinstance(mods[cut - 1], TAIL):
            cut -= 1
        self.pre = nn.Sequential(*mods[:cut])
        self.tail = nn.Sequential(*mods[cut:])

    def kernel(self) -> int:
        """Kernel size of the level's first conv (the lateral U mimics it), 1 without a conv."""
        weight = next((p for p in self.pre.parameters() if p.dim() == 4), None)
        return 1 if weight is None else int(weight.shape[-1])


class Column(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.levels = nn.ModuleList(Level(m) for m in backbone_levels(net))
        self.out_dim = int(getattr(net, "out_dim"))


class Adapter(nn.Module):
    """``U(relu(V(alpha * h)))`` from one earlier column's level output to a receiving level."""

    def __init__(self, src: Sequence[int], dst: Sequence[int], width: int, kernel: int, alpha_std: float) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.empty(()))
        nn.init.trunc_normal_(self.alpha, std=alpha_std, a=-2 * alpha_std, b=2 * alpha_std)
        self.pool: nn.Module = nn.Identity()
        if len(src) == 3 and len(dst) == 3:
            (cin, hin, win), (cout, hout, wout) = src, dst
            stride = 1
            if (hin, win) != (hout, wout):
                r = hin // hout if hout > 1 and hin % hout == 0 and win % wout == 0 and hin // hout == win // wout else 0
                if r:
                    stride = r
                else:
                    self.pool = nn.AdaptiveAvgPool2d((hout, wout))
            k = kernel if (hout, wout) != (1, 1) and kernel % 2 == 1 else 1
            self.v: nn.Module = nn.Conv2d(cin, width, 1)
            self.u: nn.Module = nn.Conv2d(width, cout, k, stride, k // 2, bias=False)
        elif len(dst) == 1:
            self.v = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(src), width))
            self.u = nn.Linear(width, dst[0], bias=False)
        else:
            raise ConfigError(f"no lateral adapter from a {tuple(src)} activation to a {tuple(dst)} one")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.u(self.pool(torch.relu(self.v(self.alpha * h))))


def _shapes(col: Column, input_shape: Sequence[int], device: torch.device) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(pre, output) shape of every level, without the batch dimension, from one probe in eval mode."""
    mode = col.training
    col.eval()
    out = []
    with torch.no_grad():
        h = torch.zeros(1, *input_shape, device=device)
        for level in col.levels:
            pre = level.pre(h)
            h = level.tail(pre)
            out.append((tuple(pre.shape[1:]), tuple(h.shape[1:])))
    col.train(mode)
    return out


class ProgressiveNet(nn.Module):
    """Columns and their lateral adapters (see the module docstring)."""

    def __init__(self, reduction: float = 1.0, lateral_levels: list[int] | None = None, alpha_std: float = 0.05) -> None:
        super().__init__()
        self.reduction = reduction
        self.lateral_levels = lateral_levels  # 1-based; None = every level after the first
        self.alpha_std = alpha_std
        self.columns = nn.ModuleList()
        self.laterals = nn.ModuleList()

    def receives(self, level: int) -> bool:
        """Whether 0-based ``level`` gets laterals."""
        return level > 0 and (self.lateral_levels is None or level + 1 in self.lateral_levels)

    def add_column(self, net: nn.Module, input_shape: Sequence[int]) -> Column:
        col = Column(net)
        device = next(col.parameters()).device
        shapes = _shapes(col, input_shape, device)
        k = len(self.columns)
        per_level = nn.ModuleList()
        for l, level in enumerate(col.levels):
            adapters = nn.ModuleList()
            if k and self.receives(l):
                src = shapes[l - 1][1]
                width = max(1, int(src[0] // (self.reduction * (k + 1))))  # LASEM: floor(C / (s * k)), at least 1
                for _ in range(k):
                    adapters.append(Adapter(src, shapes[l][0], width, level.kernel(), self.alpha_std))
            per_level.append(adapters)
        self.columns.append(col)
        self.laterals.append(per_level.to(device))
        return col

    def forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Column ``k``'s features; columns before it run without gradient."""
        outs: list[list[torch.Tensor]] = []
        h = x
        for j in range(k + 1):
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.needs_grad(j, k)):
                h, hs = x, []
                for l, level in enumerate(self.columns[j].levels):
                    pre = level.pre(h)
                    for i, adapter in enumerate(self.laterals[j][l]):
                        pre = pre + adapter(outs[i][l - 1])
                    h = level.tail(pre)
                    hs.append(h)
                outs.append(hs)
        return h.flatten(1) if h.dim() > 2 else h

    @staticmethod
    def needs_grad(j: int, k: int) -> bool:
        """Only column ``k`` itself (and its adapters) is differentiated; columns before it are frozen."""
        return j == k

    def lateral_parameters(self, k: int) -> int:
        return sum(p.numel() for p in self.laterals[k].parameters())


def lasem_init(module: nn.Module) -> None:
    """LASEM's initialisation for adapters (lasem.md 2): weights truncated normal std 0.05, biases 0.2."""
    for m in module.modules():
        if isinstance(m, WEIGHTED):
            nn.init.trunc_normal_(m.weight, std=0.05, a=-0.1, b=0.1)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0.2)
