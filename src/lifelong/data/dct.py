"""The many-small-datasets protocol of CLR (clr.md 5): each dataset folder is one task.

Layout (users bring the data; nothing is downloaded)::

    ROOT/<dataset>/train/<class>/<images>
    ROOT/<dataset>/test/<class>/<images>      (or val/: the DCT database's evaluation split is its validation set)

Task order: ``benchmark.datasets`` (a list of folder names, e.g. the 53 of ``configs/clr-dct53.yaml``),
else ``ROOT/tasks.txt`` (one folder name per line, ``#`` comments), else the sorted folder names;
``--tasks N`` keeps the first N. Within a task, labels follow the sorted class folders of its
``train`` split, capped at the first 300 (``dataset/sample_dataset.py``); evaluation images of a class
without training images are dropped (clr.md pitfall 8: a few DCT datasets have such classes).

Images are sampled class-balanced as the CLR code samples them (clr.md 5): at most round(2560/K)
training and round(256/K) evaluation images per class, or round(5120/K) and round(512/K) when
K >= 60 classes, a seeded shuffle per class (seed 27, as the code's ``random.seed(27)``; the code's
database order is not reproducible from a folder, so the picked images differ). Folders that hold
no more than that (an already sampled copy) are kept whole.

Input: every image resized to ``benchmark.image_size`` (default 224), ImageNet normalisation, no
augmentation (the method turns it off). Deviation: our image cache resizes the shorter side and
centre-crops to a square, where the code stretches to 224x224 without keeping the aspect ratio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from . import images
from .augment import AugmentSpec
from .imageset import ImageSet
from .scenario import Scenario, build_tasks

MAX_CLASSES = 300  # dataset/sample_dataset.py: classes per task capped at 300
SAMPLE_SEED = 27  # dataset/sample_dataset.py: random.seed(27)


def caps(num_classes: int) -> tuple[int, int]:
    """(train, evaluation) images per class (clr.md 5)."""
    if num_classes >= 60:
        return round(5120 / num_classes), round(512 / num_classes)
    return round(2560 / num_classes), round(256 / num_classes)


def dataset_order(root: Path, datasets: list[str] | None, tasks: int | None) -> list[str]:
    """The task order: the given list, ``tasks.txt``, or the sorted dataset folders."""
    if datasets:
        names = list(datasets)
    elif (root / "tasks.txt").is_file():
        names = [ln.split("#")[0].strip() for ln in (root / "tasks.txt").read_text().splitlines()]
        names = [n for n in names if n]
    else:
        names = sorted(d.name for d in root.iterdir() if d.is_dir() and (d / "train").is_dir())
    missing = [n for n in names if not (root / n / "train").is_dir()]
    if missing:
        raise DataError(f"{len(missing)} dataset(s) missing under {root}: {', '.join(missing[:5])}"
                        f"{'...' if len(missing) > 5 else ''}; expected {root}/<dataset>/train/<class>/<images>")
    if not names:
        raise DataError(f"no datasets under {root}; expected {root}/<dataset>/train/<class>/ and test/<class>/")
    if tasks is not None:
        if not 1 <= tasks <= len(names):
            raise ConfigError(f"--tasks {tasks} must be between 1 and the {len(names)} datasets")
        names = names[:tasks]
    return names


def _balanced(data: ImageSet, per_class: int, seed: int) -> ImageSet:
    """At most ``per_class`` images of every class, a seeded shuffle per class, in file order."""
    gen = np.random.RandomState(seed)
    lab = data.labels.numpy()
    keep = []
    for c in np.unique(lab):
        idx = np.flatnonzero(lab == c)
        keep.append(np.sort(idx[gen.permutation(len(idx))[:per_class]]) if len(idx) > per_class else idx)
    index = torch.as_tensor(np.sort(np.concatenate(keep)), dtype=torch.long)
    return data if len(index) == len(data) else data.subset(index)  # type: ignore[return-value]


def load_dataset(folder: Path, size: int) -> tuple[ImageSet, ImageSet, list[str]]:
    """One dataset's train and evaluation sets, labels by the train split's sorted class folders."""
    evaluation = next((folder / s for s in ("test", "val") if (folder / s).is_dir()), None)
    if evaluation is None:
        raise DataError(f"{folder} has no test/ (or val/) folder next to train/")
    train = images.load_folder(folder / "train", size)
    test = images.load_folder(evaluation, size)
    classes = train.class_names[:MAX_CLASSES]
    if len(classes) < len(train.class_names):
        train = train.subset(torch.nonzero(train.labels < MAX_CLASSES).flatten())  # type: ignore[assignment]
    to_train = torch.as_tensor([classes.index(c) if c in classes else -1 for c in test.class_names], dtype=torch.long)
    mapped = to_train[test.labels]
    kept = torch.nonzero(mapped >= 0).flatten()
    test = test.subset(kept).with_labels(mapped[kept])  # type: ignore[assignment]
    train.class_names = test.class_names = list(classes)
    k_train, k_eval = caps(len(classes))
    return _balanced(train, k_train, SAMPLE_SEED), _balanced(test, k_eval, SAMPLE_SEED + 1), list(classes)


def build_dct(cfg: Any, setting: str, data_root: Path | None, val: float) -> Scenario:
    """``--benchmark dct --data-root ROOT``: one task per dataset folder (see the module docstring)."""
    from .benchmarks import IMAGENET_MEAN, IMAGENET_STD  # imported here: benchmarks.py registers this builder

    if data_root is None:
        raise DataError("benchmark dct reads dataset folders: pass --data-root DIR holding <dataset>/{train,test}/<class>/")
    if setting != "task":
        raise ConfigError("benchmark dct is task-incremental: every dataset has its own label space")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DataError(f"dct data root {root} does not exist")
    size = cfg.image_size or 224  # clr.md 4: Resize((224, 224))
    val_fraction = val if cfg.val_fraction is None else cfg.val_fraction
    tasks = []
    for i, name in enumerate(dataset_order(root, getattr(cfg, "datasets", None), cfg.tasks)):
        train, test, classes = load_dataset(root / name, size)
        task = build_tasks(train, test, [list(range(len(classes)))], classes, "task", val_fraction, cfg.split_seed + i,
                           names=[name])[0]
        task.id = i
        tasks.append(task)
    return Scenario("dct", "task", tasks, AugmentSpec(size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD), 3, [])
