"""Channel-gated LASEM conv nets for CCGN (Abati et al., Conditional Channel Gated Networks, CVPR 2020).

LASEM's configuration (``utils_nn.py::new_channel_gated_conv_layer``, lasem.md 8): every conv
layer is shared by all tasks (conv + bias, ReLU, pool) and its output is multiplied channel-wise
by a per-sample gate computed by task t's gating module from the layer's *input*:

    logits = FC(ReLU(FC_256(flatten(input))))  (C_out of them),   gate = softmax(logits / 0.1)

``gate`` modes (``gate_values``):

- ``softmax``: the LASEM code; the gates of a layer sum to 1 over its channels;
- ``sigmoid``: one independent gate per channel, sigmoid(logits / T), so an L1 term on the gates
  counts open channels (the fix for the LASEM code's constant sparsity term);
- ``gumbel``: CCGN's binary gates. Training: a hard 0/1 sample of sigmoid((logits + logistic noise)
  / T) (the two-class Gumbel-softmax), straight-through (the backward pass sees the relaxed value);
  evaluation: deterministic, 1 where the logit is positive.

``gate_input`` ``flatten`` (LASEM) or ``pool`` (CCGN: global average pooling of the input).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .lasem_cnn import FCHead, LasemSpec, PlainConv, conv_same, init_plain_, pool_same

GATES = ("softmax", "sigmoid", "gumbel")
GATE_INPUTS = ("flatten", "pool")


def gate_values(logits: torch.Tensor, mode: str, temperature: float, training: bool) -> torch.Tensor:
    """(N, C) gates from (N, C) logits; see the module docstring for the three modes."""
    if mode == "softmax":
        return torch.softmax(logits / temperature, -1)
    if mode == "sigmoid":
        return torch.sigmoid(logits / temperature)
    if not training:
        return (logits > 0).to(logits.dtype)
    u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)  # logistic = Gumbel - Gumbel
    hard = (soft > 0.5).to(soft.dtype)
    return hard + (soft - soft.detach())  # exactly 0/1 forward (x - x == 0), the relaxed gradient backward


class GateMLP(nn.Module):
    """One task's gating module for one layer: input summary -> hidden (ReLU) -> C_out logits (LASEM init)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, pool: bool) -> None:
        super().__init__()
        self.pool = pool
        self.fc1, self.fc2 = nn.Linear(in_dim, hidden), nn.Linear(hidden, out_dim)
        init_plain_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.mean((2, 3)) if self.pool else x.flatten(1)
        return self.fc2(F.relu(self.fc1(h)))


class GatedConv(PlainConv):
    """A shared conv layer; ``frozen`` marks the kernels (output channels) no later task may change (CCGN)."""

    def __init__(self, ci: int, co: int, k: int, pool: int) -> None:
        super().__init__(ci, co, k)
        self.pool = pool
        self.register_buffer("frozen", torch.zeros(co, dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_same(F.relu(conv_same(x, self.weight, self.bias)), self.pool)

    @torch.no_grad()
    def reinit_unfrozen(self) -> None:
        """Fresh values (truncated normal 0.05, bias 0.2) for every kernel no task has frozen."""
        fresh = PlainConv(self.weight.shape[1], self.weight.shape[0], self.weight.shape[2]).to(self.weight.device)
        free = ~self.frozen
        self.weight[free] = fresh.weight[free]
        self.bias[free] = fresh.bias[free]

    def mask_frozen_grads(self) -> None:
        if self.weight.grad is not None:
            self.weight.grad[self.frozen] = 0
        if self.bias.grad is not None:
            self.bias.grad[self.frozen] = 0


class GatedNet(nn.Module):
    """Shared ``GatedConv`` layers; per task one ``GateMLP`` per layer and an ``FCHead``."""

    def __init__(self, spec: LasemSpec, gate_input: str = "flatten", gate_hidden: int = 256) -> None:
        super().__init__()
        self.spec, self.gate_input, self.gate_hidden = spec, gate_input, gate_hidden
        self.convs = nn.ModuleList(GatedConv(ci, co, k, p) for (ci, co), k, p in zip(spec.in_out, spec.kernels, spec.pools))
        sizes = [spec.image_size]
        for p in spec.pools:
            sizes.append(math.ceil(sizes[-1] / p))
        self.gate_in = [ci if gate_input == "pool" else ci * s * s for (ci, _), s in zip(spec.in_out, sizes)]
        self.gates = nn.ModuleDict()
        self.heads = nn.ModuleDict()

    def add_task(self, t: int, num_classes: int) -> None:
        self.gates[str(t)] = nn.ModuleList(GateMLP(d, self.gate_hidden, co, self.gate_input == "pool")
                                           for d, (_, co) in zip(self.gate_in, self.spec.in_out))
        self.heads[str(t)] = FCHead(self.spec.flat_dim, self.spec.hidden, num_classes, self.spec.dropout)

    def forward(self, x: torch.Tensor, t: int, mode: str, temperature: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits, the (N, C_l) gates of every layer) for task t."""
        gates = []
        for conv, gate in zip(self.convs, self.gates[str(t)]):
            g = gate_values(gate(x), mode, temperature, self.training)
            x = conv(x) * g[:, :, None, None]
            gates.append(g)
        return self.heads[str(t)](x.flatten(1)), gates

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        return list(self.gates[str(t)].parameters()) + list(self.heads[str(t)].parameters())
