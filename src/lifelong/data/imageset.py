"""An in-memory labelled image set: uint8 images (N, C, H, W) and int64 labels.

Images stay uint8 until a batch reaches the training device (DESIGN "Speed"): a
CIFAR-100 train split is 150 MB instead of 600 MB as float32, and the batched
augmentation converts only what it uses. ``images`` may be a NumPy memmap for
large cached folders; indexing a batch reads only those rows.

Selecting or joining rows of a memory-mapped set gives a ``RowView`` (no copy: an
ImageNet-1000 task stays on disk until its batches are read); in-memory sets are
copied, which is faster to index. Both offer what the loop reads: ``len``,
``labels``, ``tasks``, ``class_names``, ``shape``, ``batch_images``, ``subset``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class ImageSet:
    images: torch.Tensor | np.ndarray  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,)
    tasks: torch.Tensor | None = None  # int64 task id per sample (joint multi-task training)
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if self.tasks is not None and len(self.tasks) != len(self.labels):
            raise ValueError("tasks must have one entry per sample")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def batch_images(self, index: torch.Tensor) -> torch.Tensor:
        """The uint8 images at ``index`` as a CPU tensor (memmaps read only these rows)."""
        if isinstance(self.images, np.ndarray):
            idx = index.numpy()
            order = np.argsort(idx, kind="stable")  # sequential reads from a memmap
            rows = np.asarray(self.images[idx[order]])
            out = np.empty_like(rows)
            out[order] = rows
            return torch.from_numpy(out)
        return self.images[index]

    @property
    def in_memory(self) -> bool:
        return isinstance(self.images, torch.Tensor)

    def subset(self, index: torch.Tensor | np.ndarray) -> "ImageSet | RowView":
        index = torch.as_tensor(index, dtype=torch.long)
        if not self.in_memory:
            return RowView([(self, index)])
        return ImageSet(
            images=self.images[index],
            labels=self.labels[index],
            tasks=None if self.tasks is None else self.tasks[index],
            class_names=self.class_names,
        )

    def with_labels(self, labels: torch.Tensor, class_names: list[str] | None = None) -> "ImageSet":
        return ImageSet(self.images, labels.to(torch.long), self.tasks, class_names or self.class_names)

    def with_tasks(self, task_id: int) -> "ImageSet":
        return ImageSet(self.images, self.labels, torch.full_like(self.labels, task_id), self.class_names)

    def materialize(self) -> "ImageSet":
        return self

    @staticmethod
    def concat(parts: list["ImageSet | RowView"]) -> "ImageSet | RowView":
        """Join sets of the same image shape (e.g. new data plus exemplars); lazy if any part is on disk."""
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("nothing to concatenate")
        tasks = torch.cat([p.tasks for p in parts]) if all(p.tasks is not None for p in parts) else None  # type: ignore[misc]
        if not all(isinstance(p, ImageSet) and p.in_memory for p in parts):
            return RowView([(p, torch.arange(len(p))) for p in parts], tasks=tasks)
        images = torch.cat([p.images for p in parts])  # type: ignore[misc]
        return ImageSet(images, torch.cat([p.labels for p in parts]), tasks, parts[0].class_names)


class RowView:
    """Selected rows of one or more image sets (memory-mapped or not), read batch by batch."""

    def __init__(self, parts: list[tuple["ImageSet | RowView", torch.Tensor]], labels: torch.Tensor | None = None,
                 tasks: torch.Tensor | None = None, class_names: list[str] | None = None) -> None:
        self.parts = [(d, torch.as_tensor(i, dtype=torch.long)) for d, i in parts if len(i)]
        self.labels = labels if labels is not None else (
            torch.cat([d.labels[i] for d, i in self.parts]) if self.parts else torch.zeros(0, dtype=torch.long))
        if tasks is None and self.parts and all(d.tasks is not None for d, _ in self.parts):
            tasks = torch.cat([d.tasks[i] for d, i in self.parts])  # type: ignore[index]
        self.tasks = tasks
        self.class_names: list[str] = class_names if class_names is not None else (self.parts[0][0].class_names if self.parts else [])
        self._starts = torch.tensor([0] + np.cumsum([len(i) for _, i in self.parts]).tolist(), dtype=torch.long)
        self._shape = tuple(self.parts[0][0].shape) if self.parts else ()

    in_memory = False

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape  # type: ignore[return-value]

    def batch_images(self, index: torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(index, dtype=torch.long)
        part = torch.bucketize(index, self._starts[1:], right=True)
        out = torch.empty((len(index), *self._shape), dtype=torch.uint8)
        for p in part.unique().tolist():
            sel = part == p
            data, rows = self.parts[p]
            out[sel] = torch.as_tensor(data.batch_images(rows[index[sel] - self._starts[p]]))
        return out

    def subset(self, index: torch.Tensor | np.ndarray) -> "RowView":
        index = torch.as_tensor(index, dtype=torch.long)
        return RowView([(self, index)], self.labels[index], None if self.tasks is None else self.tasks[index], self.class_names)

    def with_labels(self, labels: torch.Tensor, class_names: list[str] | None = None) -> "RowView":
        return RowView(self.parts, labels.to(torch.long), self.tasks, class_names or self.class_names)

    def with_tasks(self, task_id: int) -> "RowView":
        return RowView(self.parts, self.labels, torch.full_like(self.labels, task_id), self.class_names)

    def materialize(self) -> ImageSet:
        """All rows read into one in-memory set (for small views, e.g. exemplars)."""
        return ImageSet(self.batch_images(torch.arange(len(self))), self.labels, self.tasks, self.class_names)
