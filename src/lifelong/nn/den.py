"""A growable LASEM conv net for DEN (Yoon et al., Lifelong Learning with Dynamically Expandable Networks, ICLR 2018).

Units are the channels of every conv layer and the units of every hidden FC layer. Each layer
keeps one weight tensor (n_out, n_in, *block): conv (n_out, n_in, k, k); the first FC layer
(n_out, n_in, S), S the spatial positions of the last conv's output (NCHW flattening: input unit
j owns features j*S .. j*S+S-1); later FC layers (n_out, n_in, 1). ``weight[i, j]`` is the
connection from unit j below to unit i, so rows are a unit's incoming weights and columns its
outgoing ones. The per-task output layers (``heads``) are (classes, n_top).

Units are only ever appended. The units task t serves with are those that existed when it
finished (DEN's timestamps, the code's ``time_stamp``): a prefix of every layer, so task t
computes with ``weight[:n_l^t, :n_{l-1}^t]`` and ``heads[t]``, and nothing appended later can
reach it. ``bfs_select`` is DEN's selection of the subnetwork a new head reaches.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .lasem_cnn import LasemSpec, conv_same, pool_same, trunc_normal_


class DENLayer(nn.Module):
    """One growable layer; ``conv`` layers pool after the ReLU, FC layers flatten their block into the input."""

    def __init__(self, kind: str, n_in: int, n_out: int, block: tuple[int, ...], pool: int = 1) -> None:
        super().__init__()
        self.kind, self.block, self.pool = kind, tuple(block), pool
        self.weight = nn.Parameter(trunc_normal_(torch.empty(n_out, n_in, *block)))
        self.bias = nn.Parameter(torch.full((n_out,), 0.2))

    @property
    def n_out(self) -> int:
        return self.weight.shape[0]

    @property
    def n_in(self) -> int:
        return self.weight.shape[1]

    def resize(self, n_in: int, n_out: int) -> None:
        """Empty tensors of a recorded size (a checkpoint's values are loaded into them)."""
        self.weight = nn.Parameter(torch.zeros(n_out, n_in, *self.block, device=self.weight.device))
        self.bias = nn.Parameter(torch.zeros(n_out, device=self.bias.device))

    @torch.no_grad()
    def append_outputs(self, rows: torch.Tensor, bias: torch.Tensor) -> None:
        """New units: incoming weights ``rows`` (a, n_in, *block) and biases (a,)."""
        self.weight = nn.Parameter(torch.cat([self.weight, rows.to(self.weight)], 0))
        self.bias = nn.Parameter(torch.cat([self.bias, bias.to(self.bias)], 0))

    @torch.no_grad()
    def append_inputs(self, cols: torch.Tensor) -> None:
        """Connections from new units below: ``cols`` (n_out, a, *block)."""
        self.weight = nn.Parameter(torch.cat([self.weight, cols.to(self.weight)], 1))

    @torch.no_grad()
    def keep_outputs(self, keep: torch.Tensor) -> None:
        self.weight = nn.Parameter(self.weight[keep].clone())
        self.bias = nn.Parameter(self.bias[keep].clone())

    @torch.no_grad()
    def keep_inputs(self, keep: torch.Tensor) -> None:
        self.weight = nn.Parameter(self.weight[:, keep].clone())

    def forward(self, x: torch.Tensor, n_out: int, n_in: int) -> torch.Tensor:
        w, b = self.weight[:n_out, :n_in], self.bias[:n_out]
        if self.kind == "conv":
            return pool_same(F.relu(conv_same(x, w, b)), self.pool)
        return F.relu(F.linear(x, w.reshape(n_out, -1), b))


class DENNet(nn.Module):
    """The LASEM conv stack then hidden FC layers, all ``DENLayer``s; dropout after the flatten; one head per task."""

    def __init__(self, spec: LasemSpec, hidden: Sequence[int]) -> None:
        super().__init__()
        self.spec, self.num_conv = spec, spec.num_layers
        s = spec.image_size
        for p in spec.pools:
            s = math.ceil(s / p)
        layers = [DENLayer("conv", ci, co, (k, k), p) for (ci, co), k, p in zip(spec.in_out, spec.kernels, spec.pools)]
        dims = [spec.channels[-1]] + list(hidden)
        for i, (a, b) in enumerate(zip(dims, dims[1:])):
            layers.append(DENLayer("fc", a, b, (s * s,) if i == 0 else (1,)))
        self.layers = nn.ModuleList(layers)
        self.heads = nn.ModuleDict()
        self.dropout = spec.dropout

    @property
    def widths(self) -> list[int]:
        return [layer.n_out for layer in self.layers]

    def add_head(self, t: int, num_classes: int) -> None:
        head = nn.Linear(self.layers[-1].n_out, num_classes)
        trunc_normal_(head.weight.data)
        nn.init.constant_(head.bias, 0.2)
        self.heads[str(t)] = head

    def count(self, widths: Sequence[int]) -> int:
        """Parameters (weights and biases) of the hidden layers at these widths."""
        n_in, total = self.spec.in_channels, 0
        for layer, n in zip(self.layers, widths):
            total += n * n_in * math.prod(layer.block) + n
            n_in = n
        return total

    @torch.no_grad()
    def head_append_inputs(self, t: int, cols: torch.Tensor) -> None:
        head = self.heads[str(t)]
        head.weight = nn.Parameter(torch.cat([head.weight, cols.to(head.weight)], 1))

    def forward(self, x: torch.Tensor, t: int, widths: Sequence[int]) -> torch.Tensor:
        n_in = self.spec.in_channels
        for l, (layer, n) in enumerate(zip(self.layers, widths)):
            if l == self.num_conv:
                x = F.dropout(x.flatten(1), self.dropout, self.training)
            x = layer(x, n, n_in)
            n_in = n
        if len(self.layers) == self.num_conv:  # no hidden FC layer
            x = F.dropout(x.flatten(1), self.dropout, self.training)
        return self.heads[str(t)](x)


def bfs_select(weights: Sequence[torch.Tensor], head: torch.Tensor, zero: float, unit_sparsity: float) -> list[torch.Tensor]:
    """DEN's breadth-first search from a new head down through non-zero weights.

    ``weights``: the hidden layers' (n_l, n_{l-1}, *block) tensors, bottom first; ``head``: (classes, n_top).
    Returns, bottom first, a boolean mask over each hidden layer's units: the units reached. A weight
    is zero when |w| <= ``zero`` (0: exactly zero); a unit is reached when it has a non-zero weight into the units reached
    above it and less than ``unit_sparsity`` of those weights are zero (DEN code: any non-zero weight,
    i.e. ``unit_sparsity`` = 1). The network's inputs are always used."""
    above = head.reshape(head.shape[0], head.shape[1], 1)  # the layer above the top hidden one
    reached = torch.ones(head.shape[0], dtype=torch.bool, device=head.device)  # every output unit starts the search
    out: list[torch.Tensor] = []
    for w in reversed(list(weights)):  # top hidden layer first; its units are the columns of ``above``
        if not bool(reached.any()):
            sel = torch.zeros(w.shape[0], dtype=torch.bool, device=w.device)
            out.append(sel)
            above, reached = w, sel
            continue
        nz = above[reached].abs() > zero  # (units reached above, n_l, *block)
        nz = nz.transpose(0, 1).reshape(nz.shape[1], -1)  # per unit of this layer: its weights into the reached units
        sel = nz.any(1) & ((1 - nz.float().mean(1)) < unit_sparsity)
        out.append(sel)
        above, reached = w, sel
    return out[::-1]


def unit_masks(layers: Sequence[DENLayer], rows: Sequence[torch.Tensor], cols_any: bool,
               born: Sequence[torch.Tensor] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (weight mask, bias mask) of the entries a DEN stage trains. ``rows``: the units whose incoming
    weights train. ``cols_any``: also, in every row, the columns of the ``born`` units below (everything that
    touches a new unit); otherwise only the columns of ``rows`` units below (a subnetwork; the inputs always)."""
    out = []
    for l, layer in enumerate(layers):
        r = rows[l].to(layer.weight.device)
        if cols_any:
            below = torch.zeros(layer.n_in, dtype=torch.bool, device=r.device) if l == 0 else born[l - 1].to(r.device)  # type: ignore[index]
            m = r[:, None] | below[None, :]
        else:
            below = torch.ones(layer.n_in, dtype=torch.bool, device=r.device) if l == 0 else rows[l - 1].to(r.device)
            m = r[:, None] & below[None, :]
        out.append((m.view(m.shape + (1,) * len(layer.block)).expand_as(layer.weight).float(), r.float()))
    return out
