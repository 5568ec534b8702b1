"""Dual-branch networks of AANets (Liu, Schiele, Sun, CVPR 2021): a stable and a plastic block per
residual level, aggregated with one learnable scalar per level.

Built from any backbone that exposes ``levels()`` (its stages in order, stem folded into the
first and pooling into the last; running them in sequence is ``forward``), so ResNet-32 (3 levels),
ResNet-18 (4 levels) and the small conv nets all work without a parallel ResNet family:

- ``stable_copy(net)``: a deep copy whose every ``nn.Conv2d`` becomes a ``ScaledConv2d`` - the
  phase-0 weight frozen, times a learnable scale of shape ``[C_out, C_in/groups, 1, 1]`` initialised
  to 1 (meta-transfer learning's "scaling", manets.md 2.3). BatchNorm stays an ordinary trainable
  BN (pitfall 6.5), biases (none in ResNets) stay trainable as MTL's "shift";
- ``plastic_copy(net, fixed)``: a deep copy, all parameters trainable (``free``) or none (``fixed``,
  the code's lr 0 / wd 0; BN running statistics still move in train mode, manets.md 2.4);
- ``DualBranchNet(stable, plastic)``: ``h <- alpha_k * stable_k(h) + (1 - alpha_k) * plastic_k(h)``
  after each level, both blocks reading the same aggregated input (manets.md 2.2). The alphas are
  one fp32 vector (one entry per level, initialised 0.5, unconstrained, manets.md 2.5).

The aggregation is ``torch.lerp(plastic, stable, alpha)``, computed in fp32 with autocast off:
it equals ``alpha * s + (1 - alpha) * p`` and is *exact* when ``s == p`` (so a network whose two
branches were loaded from phase 0 with S = 1 reproduces phase 0 bit for bit, for any alpha) and
when ``alpha`` is 0 or 1; fp32 keeps the tiny fusion-lr updates and the alpha gradient out of
bf16/fp16 rounding (pitfall 6.2).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError


class ScaledConv2d(nn.Conv2d):
    """``conv(x, W * S)``: ``W`` frozen (``requires_grad=False``), ``S`` learnable, one scalar per
    (output, input) channel pair broadcast over the kernel (``conv2d_mtl.py`` of the AANets code)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.weight.requires_grad_(False)
        self.scale = nn.Parameter(torch.ones(self.out_channels, self.in_channels // self.groups, 1, 1,
                                             device=self.weight.device, dtype=self.weight.dtype))

    @staticmethod
    def of(conv: nn.Conv2d) -> "ScaledConv2d":
        """The scaled twin of ``conv``: same geometry, its weight (and bias) copied, S = 1."""
        new = ScaledConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
                           conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,  # type: ignore[arg-type]
                           device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)  # type: ignore[union-attr]
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.scale, self.bias)


def _swap_convs(module: nn.Module) -> None:
    for name, child in module.named_children():
        if type(child) is nn.Conv2d:
            setattr(module, name, ScaledConv2d.of(child))
        else:
            _swap_convs(child)


def stable_copy(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with scales on frozen conv weights (the ``ss`` block); ``net`` is untouched."""
    out = copy.deepcopy(net)
    _swap_convs(out)
    return out


def plastic_copy(net: nn.Module, fixed: bool = False) -> nn.Module:
    """A copy of ``net``: every parameter trainable (``free``) or frozen (``fixed``)."""
    out = copy.deepcopy(net)
    if fixed:
        out.requires_grad_(False)
    return out


def scale_count(net: nn.Module) -> int:
    """Scale parameters ``stable_copy(net)`` adds: sum over convs of ``C_out * C_in / groups``
    (53,808 for ResNet-32 with 1x1 shortcuts, manets.md 2.3)."""
    return sum(m.out_channels * (m.in_channels // m.groups) for m in net.modules() if isinstance(m, nn.Conv2d))


def levels_of(net: nn.Module) -> list[nn.Module]:
    if not callable(getattr(net, "levels", None)):
        raise ConfigError(f"backbone {type(net).__name__} has no levels(); a dual-branch network needs its stages "
                          "in order (see nn/resnet.py or nn/convnets.py for examples)")
    return list(net.levels())  # type: ignore[operator]


def fuse(alpha: torch.Tensor, stable: torch.Tensor, plastic: torch.Tensor) -> torch.Tensor:
    """``alpha * stable + (1 - alpha) * plastic`` in fp32 whatever autocast says (see module docstring)."""
    with torch.autocast(stable.device.type, enabled=False):
        return torch.lerp(plastic.float(), stable.float(), alpha.float())


class DualBranchNet(nn.Module):
    """Stable and plastic branch aggregated after every level; same ``forward``/``out_dim`` contract
    as a backbone (features ``(N, out_dim)``), so heads and feature helpers take it unchanged."""

    def __init__(self, stable: nn.Module, plastic: nn.Module, alpha: float = 0.5) -> None:
        super().__init__()
        self.stable = stable
        self.plastic = plastic
        n = len(levels_of(stable))
        if len(levels_of(plastic)) != n:
            raise ConfigError("the two branches of a dual-branch network must have the same number of levels")
        device = next(stable.parameters()).device
        self.alphas = nn.Parameter(torch.full((n,), float(alpha), dtype=torch.float32, device=device))
        # The running sum of alpha gradients for ``alpha_grad=accumulate`` (manets.md 6.1), saved so a
        # resumed run continues it; plain ``.grad`` is not part of a state dict.
        self.register_buffer("alpha_grad_sum", torch.zeros(n, dtype=torch.float32, device=device))
        self.out_dim = int(getattr(stable, "out_dim"))
        self._pairs: list[tuple[nn.Module, nn.Module]] | None = None  # not registered: views of the branches

    def pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        if self._pairs is None:  # built lazily, after any module swap; deep copies keep it consistent (memo)
            self._pairs = list(zip(levels_of(self.stable), levels_of(self.plastic)))
        return self._pairs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for k, (s_level, p_level) in enumerate(self.pairs()):
            h = fuse(self.alphas[k], s_level(h), p_level(h))
        return h

    def branch_parameters(self) -> list[nn.Parameter]:
        """The two branches' trainable parameters (scales, BN, free block): what step 1 updates."""
        return [p for p in list(self.stable.parameters()) + list(self.plastic.parameters()) if p.requires_grad]

    def alpha_list(self) -> list[float]:
        return [float(a) for a in self.alphas.detach().cpu()]
