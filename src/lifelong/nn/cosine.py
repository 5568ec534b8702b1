"""LUCIR's cosine-normalised classifier, grown one chunk per step (same shape as ``IncrementalHead``).

``logits = sigma * <normalise(f), normalise(w_c)>`` with one learnable scalar ``sigma``
initialised to 1 (manets.md 2.1: LUCIR's ``CosineLinear``, not 10 or 16). The chunk list plays
the role of LUCIR's ``SplitCosineLinear``: earlier chunks are the old-class rows (``fc1``),
the newest chunk the new classes (``fc2``); ``cosines`` returns the unscaled values the margin
ranking loss needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CosineChunk(nn.Module):
    """The rows (weights, no bias) of one step's classes."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        bound = 1.0 / math.sqrt(in_dim)  # CosineLinear.reset_parameters: U(-1/sqrt(d), 1/sqrt(d))
        nn.init.uniform_(self.weight, -bound, bound)

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def cosines(self, features: torch.Tensor) -> torch.Tensor:
        # in fp32 under --precision bf16|16: the normalisation and the cosines are what the margin and
        # distillation losses compare, and half precision rounds them to 3 digits
        with torch.autocast(features.device.type, enabled=False):
            return F.normalize(features.float(), dim=1) @ F.normalize(self.weight.float(), dim=1).t()


class CosineIncrementalHead(nn.Module):
    """Cosine classifier over all classes seen so far, one ``CosineChunk`` per step, shared ``sigma``."""

    def __init__(self, in_dim: int, sigma: float = 1.0, learn_sigma: bool = True) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.chunks = nn.ModuleList()
        s = torch.tensor(float(sigma))
        if learn_sigma:
            self.sigma = nn.Parameter(s)
        else:
            self.register_buffer("sigma", s)

    @property
    def num_classes(self) -> int:
        return sum(c.out_features for c in self.chunks)

    def add(self, num_classes: int) -> CosineChunk:
        chunk = CosineChunk(self.in_dim, num_classes)
        self.chunks.append(chunk)
        return chunk

    def cosines(self, features: torch.Tensor) -> torch.Tensor:
        """Unscaled cosines to every class row, ``(B, num_classes)``."""
        return torch.cat([c.cosines(features) for c in self.chunks], dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.sigma * self.cosines(features)

    @torch.no_grad()
    def imprint(self, chunk: int, normalized_means: torch.Tensor) -> None:
        """Weight imprinting (manets.md 2.6): the chunk's rows become the given unit class means times
        the mean L2 norm of all earlier rows (or 1 when there are none)."""
        old = [c.weight for c in list(self.chunks)[:chunk]]
        scale = torch.cat(old).norm(dim=1).mean() if old else torch.tensor(1.0)
        target = self.chunks[chunk].weight
        target.copy_(normalized_means.to(target) * scale.to(target))
