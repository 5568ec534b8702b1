"""Additive parameter decomposition (APD, Yoon et al. ICLR 2020) on the LASEM conv nets.

LASEM's configuration (``utils_nn.py::new_APD_conv_layer``, lasem.md 8): per conv layer a shared
kernel sigma and conv bias, and per task mask logits M_t and a task-adaptive kernel tau_t, each
kernel-shaped and truncated normal 0.05 (the bias 0.2, as every LASEM layer):

    W_t = sigma * sigmoid(M_t) + tau_t

APD's own code (``jaehong-yoon93/APD``, ``cifar100_apd.py``) masks per output filter instead
(``mask_shape="channel"``: M_t has one logit per output channel).

Hierarchical knowledge consolidation (APD section 3.3; the code's ``k_means_clustering`` and
``aw_consolidation``): the task-adaptive kernels of a layer are clustered by k-means; in a group
of two or more tasks, the elements on which every member agrees to within ``e_gap``
(max - min <= e_gap) move into the group's locally shared kernel (the midpoint (max + min) / 2)
and are zeroed in each member's tau. A consolidated task's kernel is then
sigma * sigmoid(M_t) + local_g(t) + tau_t. A group of one keeps its full tau and no local part.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .lasem_cnn import conv_same, pool_same, trunc_normal_

MASK_SHAPES = ("kernel", "channel")


class APDLayer(nn.Module):
    """Conv position l of every task: shared sigma and bias; per task M_t and tau_t; consolidated local kernels.

    ``local`` (groups, co, ci, k, k) and ``group`` (the group of each consolidated task) are buffers
    whose sizes the method records in its structure, so a restart rebuilds them before loading."""

    def __init__(self, ci: int, co: int, k: int, pool: int, mask_shape: str = "kernel") -> None:
        super().__init__()
        self.ci, self.co, self.k, self.pool, self.mask_shape = ci, co, k, pool, mask_shape
        self.sigma = nn.Parameter(trunc_normal_(torch.empty(co, ci, k, k)))
        self.bias = nn.Parameter(torch.full((co,), 0.2))
        self.mask = nn.ParameterDict()
        self.tau = nn.ParameterDict()
        self.register_buffer("local", torch.zeros(0, co, ci, k, k))
        self.register_buffer("group", torch.zeros(0, dtype=torch.long))

    def add_task(self, t: int) -> None:
        shape = (self.co, self.ci, self.k, self.k) if self.mask_shape == "kernel" else (self.co, 1, 1, 1)
        self.mask[str(t)] = nn.Parameter(trunc_normal_(torch.empty(shape)))
        self.tau[str(t)] = nn.Parameter(trunc_normal_(torch.empty(self.co, self.ci, self.k, self.k)))

    def resize_consolidation(self, tasks: int, groups: int) -> None:
        self.local = torch.zeros(groups, self.co, self.ci, self.k, self.k, device=self.sigma.device)
        self.group = torch.zeros(tasks, dtype=torch.long, device=self.sigma.device)

    def full_tau(self, t: int) -> torch.Tensor:
        """tau_t plus its group's locally shared kernel once t is consolidated."""
        tau = self.tau[str(t)]
        return tau + self.local[self.group[t]] if t < self.group.numel() else tau

    def weight(self, t: int) -> torch.Tensor:
        return self.sigma * torch.sigmoid(self.mask[str(t)]) + self.full_tau(t)

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return pool_same(F.relu(conv_same(x, self.weight(t), self.bias)), self.pool)


def kmeans(x: torch.Tensor, k: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    """Assignments (n,) of the rows of ``x`` (n, d) to k clusters: k distinct random rows as the first
    centroids, then ``iters`` Lloyd updates (an empty cluster keeps its centroid; ties to the lower index)."""
    n = x.shape[0]
    k = max(1, min(k, n))
    cent = x[torch.randperm(n, generator=gen)[:k].to(x.device)].clone()
    assign = torch.zeros(n, dtype=torch.long, device=x.device)
    for _ in range(iters):
        assign = torch.cdist(x, cent).argmin(1)
        for c in range(k):
            members = assign == c
            if members.any():
                cent[c] = x[members].mean(0)
    return assign


def consolidate(full: torch.Tensor, assign: torch.Tensor, groups: int, e_gap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(local (groups, ...), residual (n, ...)) from the full task-adaptive kernels ``full`` (n, ...):
    within a group of >= 2 tasks, elements with max - min <= e_gap go to local = (max + min) / 2 and are
    zeroed in every member's residual; a single task keeps its full kernel and its group's local is 0."""
    local = torch.zeros((groups,) + tuple(full.shape[1:]), dtype=full.dtype, device=full.device)
    residual = full.clone()
    for g in range(groups):
        members = assign == g
        if int(members.sum()) < 2:
            continue
        e_max, e_min = full[members].amax(0), full[members].amin(0)
        shared = (e_max - e_min) <= e_gap
        local[g] = (e_max + e_min) / 2 * shared
        residual[members] = full[members] * ~shared
    return local, residual
