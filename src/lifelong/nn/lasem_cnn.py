"""The per-dataset conv nets of the LASEM code (lasem.md 2) and the pieces every LASEM-family layer uses.

Per conv layer: conv (stride 1, SAME padding) + bias, ReLU, max-pool with kernel = stride = p
and TF's SAME padding (output ceil(in/p)); after the last conv: flatten, *one* dropout (keep 0.5),
the FC stack (ReLU after each hidden layer), and a linear output per task. No batch norm.
Plain conv/FC weights: truncated normal std 0.05, biases 0.2 (``utils.py::new_weight/new_bias``).

``lasem_cnn`` as a backbone (STL, SNN) is the conv stack plus dropout and the hidden FC layers;
``out_dim`` is the last hidden width and the method adds the output layer (``init_plain_``).
The transfer methods (HPS/TF/DF-CNN/LASEM, ``nn/transfer.py``) read ``spec`` from it and build
their own per-layer parameterisation with the same shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class Arch:
    kernels: tuple[int, ...]
    channels: tuple[int, ...]
    pools: tuple[int, ...]
    hidden: tuple[int, ...]
    # DF-CNN sizes per layer (lasem.md 5): shared KB (kb, c_kb) and per-task deconv (kd, c_ts)
    kb: tuple[tuple[int, int], ...]
    ts: tuple[tuple[int, int], ...]


# lasem.md 2 (``utils_env_cl.py::model_setup``) and 5 (``cnn_KB_sizes``/``cnn_TS_sizes``).
ARCHS: dict[str, Arch] = {
    "cifar4": Arch((3, 3, 3, 3), (32, 32, 64, 64), (1, 2, 1, 2), (64,),
                   ((2, 16), (2, 24), (2, 32), (2, 36)), ((3, 24), (3, 48), (3, 64), (3, 72))),
    "cifar6": Arch((3,) * 6, (32, 32, 64, 64, 128, 128), (1, 2, 1, 2, 1, 2), (64,),
                   ((2, 16), (2, 24), (2, 32), (2, 36), (2, 64), (2, 72)),
                   ((3, 24), (3, 48), (3, 64), (3, 72), (3, 128), (3, 144))),
    "officehome4": Arch((11, 5, 3, 3), (64, 256, 256, 256), (3, 3, 2, 2), (256, 64),
                        ((6, 24), (3, 64), (2, 64), (2, 64)), ((3, 48), (3, 128), (3, 128), (3, 128))),
    "officehome6": Arch((11, 5, 3, 3, 3, 3), (64, 256, 256, 256, 256, 256), (3, 3, 1, 2, 1, 2), (256, 64),
                        ((6, 24), (3, 64)) + ((2, 72),) * 4, ((5, 48), (3, 128)) + ((3, 144),) * 4),
    "stl6": Arch((3,) * 6, (32, 32, 64, 64, 128, 128), (1, 3, 1, 3, 1, 3), (128, 16),
                 ((2, 12), (2, 24), (2, 32), (2, 48), (2, 64), (2, 96)),
                 ((3, 24), (3, 48), (3, 64), (3, 96), (3, 128), (3, 192))),
}


@dataclass(frozen=True)
class LasemSpec:
    """Everything a LASEM-family network's shapes follow from (recorded nowhere else)."""

    variant: str
    in_channels: int
    image_size: int
    kernels: tuple[int, ...]
    channels: tuple[int, ...]
    pools: tuple[int, ...]
    hidden: tuple[int, ...]
    kb: tuple[tuple[int, int], ...]
    ts: tuple[tuple[int, int], ...]
    dropout: float = 0.5  # drop probability (keep 0.5, lasem.md 2)

    @property
    def num_layers(self) -> int:
        return len(self.kernels)

    @property
    def in_out(self) -> list[tuple[int, int]]:
        chans = (self.in_channels,) + self.channels
        return [(chans[i], chans[i + 1]) for i in range(self.num_layers)]

    @property
    def flat_dim(self) -> int:
        s = self.image_size
        for p in self.pools:
            s = math.ceil(s / p)
        return s * s * self.channels[-1]


def default_variant(image_size: int) -> str:
    """Unset ``backbone.variant``: the dataset whose input size this is (128 Office-Home, 96 STL-10), else CIFAR's 4 layers."""
    return {128: "officehome4", 96: "stl6"}.get(image_size, "cifar4")


def lasem_spec(variant: str | None, in_channels: int, image_size: int, width: float = 1.0) -> LasemSpec:
    variant = variant or default_variant(image_size)
    if variant not in ARCHS:
        raise ConfigError(f"backbone.variant {variant!r} is not one of {', '.join(ARCHS)}")
    a = ARCHS[variant]
    channels = tuple(max(1, int(c * width)) for c in a.channels)
    return LasemSpec(variant, in_channels, image_size, a.kernels, channels, a.pools, a.hidden, a.kb, a.ts)


# ------------------------------------------------------------------ TF initialisers and SAME ops
def trunc_normal_(t: torch.Tensor, std: float = 0.05) -> torch.Tensor:
    """``tf.truncated_normal(stddev=std)``: redrawn beyond two standard deviations."""
    return nn.init.trunc_normal_(t, 0.0, std, -2 * std, 2 * std)


def tf_glorot_uniform_(t: torch.Tensor, tf_shape: tuple[int, ...]) -> torch.Tensor:
    """TF's default ``get_variable`` initialiser, fans from the *TF* layout ``tf_shape``
    (receptive field = product of all but the last two dims; 1-D: fan_in = fan_out = n)."""
    if len(tf_shape) == 1:
        fan_in = fan_out = tf_shape[0]
    else:
        rf = math.prod(tf_shape[:-2])
        fan_in, fan_out = tf_shape[-2] * rf, tf_shape[-1] * rf
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return t.uniform_(-limit, limit)


def conv_same(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Stride-1 conv with TF SAME padding (extra row/column at the bottom/right for even kernels)."""
    kh, kw = w.shape[-2:]
    if kh % 2 and kw % 2:
        return F.conv2d(x, w, b, padding=(kh // 2, kw // 2))
    x = F.pad(x, ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2))
    return F.conv2d(x, w, b)


def pool_same(x: torch.Tensor, p: int) -> torch.Tensor:
    """Max-pool kernel = stride = p with TF SAME padding: total pad p*ceil(n/p) - n, the smaller half first."""
    if p == 1:
        return x
    h, w = x.shape[-2:]
    ph, pw = p * math.ceil(h / p) - h, p * math.ceil(w / p) - w
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=float("-inf"))
    return F.max_pool2d(x, p, p)


def init_plain_(module: nn.Module) -> nn.Module:
    """Truncated normal 0.05 weights and 0.2 biases for every conv/linear in ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight.data)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0.2)
    return module


class PlainConv(nn.Module):
    """One task's own (or HPS's shared) conv layer: weight (co, ci, k, k), bias (co)."""

    def __init__(self, ci: int, co: int, k: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(co, ci, k, k))
        self.bias = nn.Parameter(torch.empty(co))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        trunc_normal_(self.weight.data)
        nn.init.constant_(self.bias, 0.2)


class FCHead(nn.Module):
    """Dropout, hidden FC layers (ReLU after each), output layer: the task-specific top of every LASEM net.

    ``dropout=False`` in ``forward`` turns the dropout off in train mode (LASEM's E-step)."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], out_dim: int | None, p: float = 0.5) -> None:
        super().__init__()
        dims = (in_dim,) + tuple(hidden) + ((out_dim,) if out_dim else ())
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.p = p
        self.has_output = out_dim is not None
        self.out_dim = dims[-1]
        init_plain_(self)

    def forward(self, x: torch.Tensor, dropout: bool = True) -> torch.Tensor:
        x = F.dropout(x, self.p, training=self.training and dropout)
        for i, fc in enumerate(self.fcs):
            x = fc(x)
            if i < len(self.fcs) - 1 or not self.has_output:
                x = F.relu(x)
        return x


class LasemCNN(nn.Module):
    """The backbone form (STL, SNN): conv stack, flatten, dropout, hidden FC layers; ``out_dim`` features."""

    def __init__(self, spec: LasemSpec) -> None:
        super().__init__()
        self.spec = spec
        self.convs = nn.ModuleList(PlainConv(ci, co, k) for (ci, co), k in zip(spec.in_out, spec.kernels))
        self.fc = FCHead(spec.flat_dim, spec.hidden, None, spec.dropout)
        self.out_dim = self.fc.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, p in zip(self.convs, self.spec.pools):
            x = pool_same(F.relu(conv_same(x, conv.weight, conv.bias)), p)
        return self.fc(x.flatten(1))
