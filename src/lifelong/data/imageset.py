"""An in-memory labelled image set: uint8 images (N, C, H, W) and int64 labels.

Images stay uint8 until a batch reaches the training device (DESIGN "Speed"): a
CIFAR-100 train split is 150 MB instead of 600 MB as float32, and the batched
augmentation converts only what it uses. ``images`` may be a NumPy memmap for
large cached folders; indexing a batch reads only those rows.
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

    def subset(self, index: torch.Tensor | np.ndarray) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        images = self.images[index.numpy()] if isinstance(self.images, np.ndarray) else self.images[index]
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        return ImageSet(
            images=images,
            labels=self.labels[index],
            tasks=None if self.tasks is None else self.tasks[index],
            class_names=self.class_names,
        )

    def with_labels(self, labels: torch.Tensor, class_names: list[str] | None = None) -> "ImageSet":
        return ImageSet(self.images, labels.to(torch.long), self.tasks, class_names or self.class_names)

    def with_tasks(self, task_id: int) -> "ImageSet":
        return ImageSet(self.images, self.labels, torch.full_like(self.labels, task_id), self.class_names)

    @staticmethod
    def concat(parts: list["ImageSet"]) -> "ImageSet":
        """Join sets of the same image shape (e.g. new data plus exemplars)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("nothing to concatenate")
        images = torch.cat([torch.as_tensor(np.asarray(p.images)) if isinstance(p.images, np.ndarray) else p.images for p in parts])
        tasks = None
        if all(p.tasks is not None for p in parts):
            tasks = torch.cat([p.tasks for p in parts])  # type: ignore[misc]
        return ImageSet(images, torch.cat([p.labels for p in parts]), tasks, parts[0].class_names)
