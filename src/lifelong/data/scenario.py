"""Tasks and scenarios: how a dataset becomes a stream of tasks.

Label spaces (DESIGN "Two settings"):
- task-incremental: each task's labels are 0..k-1 in the order of ``Task.classes``;
- class-incremental: labels are positions in the scenario's class order, so task
  ``i`` covers ``[offset, offset + k)`` and the head grows over all seen classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError
from .augment import AugmentSpec
from .imageset import ImageSet, RowView

SETTINGS = ("task", "class")


@dataclass
class Task:
    id: int  # 0-based position in the stream
    name: str
    classes: list[int]  # the dataset's class ids, in the order the task presents them
    class_names: list[str]
    train: ImageSet | RowView  # a RowView over memory-mapped folders: nothing copied into RAM
    val: ImageSet | RowView
    test: ImageSet | RowView
    offset: int = 0  # class-incremental: first label of this task in the growing label space
    mean: tuple[float, ...] | None = None  # per-task normalisation (CPG's CIFAR protocol); None = scenario's
    std: tuple[float, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class Scenario:
    name: str
    setting: str  # "task" or "class"
    tasks: list[Task]
    augment: AugmentSpec
    in_channels: int
    class_order: list[int] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return sum(t.num_classes for t in self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)


def legacy_permutation(n: int, seed: int) -> list[int]:
    """``np.random.seed(seed); order = arange(n); shuffle(order)``: the iCaRL/LUCIR/BiC class order.

    Uses a private ``RandomState`` (same legacy algorithm) so no global state is touched.
    """
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    return order.tolist()


def class_groups(order: list[int], setting: str, tasks: int | None, base: int | None, increment: int | None) -> list[list[int]]:
    """Split a class order into per-task groups: ``tasks`` equal groups, or ``base`` then steps of ``increment``."""
    n = len(order)
    if base is not None or increment is not None:
        inc = increment or base
        base = base if base is not None else inc
        if not base or not inc or base < 1 or inc < 1 or base > n:
            raise ConfigError(f"--base {base} --increment {inc} do not split {n} classes; use 1 <= base <= {n} and increment >= 1")
        if (n - base) % inc:
            if increment is None:  # never name a flag the user did not pass
                raise ConfigError(f"--base {base} leaves {n - base} of the {n} classes, which steps of {base} classes (the "
                                  f"base size, used when --increment is not given) do not divide; pass --increment K")
            raise ConfigError(f"{n} classes minus a base of {base} is not a multiple of --increment {inc}")
        groups = [order[:base]] + [order[i:i + inc] for i in range(base, n, inc)]
    else:
        t = tasks or n
        if t < 1 or n % t:
            raise ConfigError(f"--tasks {t} does not divide {n} classes evenly; choose a divisor of {n}")
        k = n // t
        groups = [order[i:i + k] for i in range(0, n, k)]
    if tasks is not None and (base is not None or increment is not None) and len(groups) != tasks:
        raise ConfigError(f"--tasks {tasks} disagrees with --base/--increment, which give {len(groups)} tasks")
    return groups


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (keep, held_out): ``fraction`` of every class held out, rounded, seeded, at least one kept."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"split fraction {fraction} must be in [0, 1)")
    gen = np.random.RandomState(seed)
    keep, held = [], []
    lab = labels.numpy()
    for c in np.unique(lab):
        idx = np.flatnonzero(lab == c)
        idx = idx[gen.permutation(len(idx))]
        n_held = min(int(round(fraction * len(idx))), len(idx) - 1)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    as_t = lambda parts: torch.as_tensor(np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64), dtype=torch.long)
    return as_t(keep), as_t(held)


def _select(data: ImageSet, classes: list[int], labels_for: dict[int, int]) -> ImageSet | RowView:
    mask = torch.isin(data.labels, torch.as_tensor(classes))
    idx = torch.nonzero(mask).flatten()
    sub = data.subset(idx)
    mapping = torch.full((int(data.labels.max()) + 1 if len(data) else 1,), -1, dtype=torch.long)
    for c, lab in labels_for.items():
        if c < len(mapping):
            mapping[c] = lab
    return sub.with_labels(mapping[sub.labels] if len(sub) else sub.labels)


def channel_stats(images: ImageSet | RowView, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units (as torchvision's Normalize expects), read in chunks."""
    total = torch.zeros(images.shape[0], dtype=torch.float64)
    squares = torch.zeros_like(total)
    count = 0
    for idx in torch.arange(len(images)).split(chunk):
        x = images.batch_images(idx).double().div_(255.0)
        total += x.sum((0, 2, 3))
        squares += x.pow(2).sum((0, 2, 3))
        count += x.numel() // x.shape[1]
    mean = total / max(count, 1)
    var = (squares / max(count, 1) - mean.pow(2)) * count / max(count - 1, 1)
    return tuple(mean.tolist()), tuple(var.clamp_min(0).sqrt().clamp_min(1e-3).tolist())


def build_tasks(
    train: ImageSet,
    test: ImageSet,
    groups: list[list[int]],
    class_names: list[str],
    setting: str,
    val_fraction: float = 0.0,
    split_seed: int = 0,
    names: list[str] | None = None,
    per_task_norm: bool = False,
) -> list[Task]:
    """One Task per class group, relabelled for the setting, with an optional held-out val split."""
    if setting not in SETTINGS:
        raise ConfigError(f"unknown setting {setting!r}; use one of {', '.join(SETTINGS)}")
    tasks: list[Task] = []
    offset = 0
    for i, group in enumerate(groups):
        if setting == "task":
            labels_for = {c: j for j, c in enumerate(group)}
        else:
            labels_for = {c: offset + j for j, c in enumerate(group)}
        tr = _select(train, group, labels_for)
        te = _select(test, group, labels_for)
        keep, held = stratified_split(tr.labels, val_fraction, split_seed + i) if val_fraction > 0 else (None, None)
        val = tr.subset(held) if held is not None else tr.subset(torch.zeros(0, dtype=torch.long))
        if keep is not None:
            tr = tr.subset(keep)
        cnames = [class_names[c] for c in group]
        tr.class_names = val.class_names = te.class_names = cnames
        mean = std = None
        if per_task_norm:
            mean, std = channel_stats(tr)
        name = names[i] if names else f"task{i + 1}"
        tasks.append(Task(i, name, list(group), cnames, tr, val, te, offset if setting == "class" else 0, mean, std))
        offset += len(group)
    return tasks
