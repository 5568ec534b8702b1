"""Classifier heads: one per task (task-incremental) or one growing head (class-incremental).

Both are lists of ``nn.Linear`` chunks, so a checkpoint's shapes follow from the
list of class counts alone (``Method.rebuild``), and methods that treat the
newest classes specially (BiC's bias layer, LUCIR's imprinting) see them as one chunk.
"""

from __future__ import annotations

import torch
from torch import nn


class MultiHead(nn.Module):
    """Task ``t`` has its own ``Linear(in_dim, k_t)``; logits cover that task's classes only."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.heads = nn.ModuleList()

    def add(self, num_classes: int) -> nn.Linear:
        head = nn.Linear(self.in_dim, num_classes)
        self.heads.append(head)
        return head

    def forward(self, features: torch.Tensor, task_id: int) -> torch.Tensor:
        return self.heads[task_id](features)

    def logits(self, features: torch.Tensor, task_id: int | None) -> torch.Tensor:
        return self.heads[task_id](features)  # type: ignore[index]

    def trained(self, task_id: int) -> nn.Module:
        """The part a task trains: its own head."""
        return self.heads[task_id]

    def per_task(self) -> list[nn.Module]:
        return list(self.heads)

    def forward_mixed(self, features: torch.Tensor, task_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of a batch whose samples come from several tasks (joint training)."""
        loss = features.new_zeros(())
        for t in task_ids.unique().tolist():
            sel = task_ids == t
            loss = loss + nn.functional.cross_entropy(self.heads[t](features[sel]), labels[sel], reduction="sum")
        return loss / max(1, len(labels))


class IncrementalHead(nn.Module):
    """One label space over all classes seen so far, grown by one ``Linear`` chunk per step."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.chunks = nn.ModuleList()

    @property
    def num_classes(self) -> int:
        return sum(c.out_features for c in self.chunks)

    def add(self, num_classes: int) -> nn.Linear:
        chunk = nn.Linear(self.in_dim, num_classes)
        self.chunks.append(chunk)
        return chunk

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([c(features) for c in self.chunks], dim=1)

    def logits(self, features: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        return self(features)  # one label space: no task id

    def trained(self, task_id: int) -> nn.Module:
        """The part a step trains: the whole growing head."""
        return self

    def per_task(self) -> list[nn.Module]:
        return list(self.chunks)


def head_for(setting: str, in_dim: int) -> MultiHead | IncrementalHead:
    """A head per task (task setting) or one growing head (class setting)."""
    return MultiHead(in_dim) if setting == "task" else IncrementalHead(in_dim)
