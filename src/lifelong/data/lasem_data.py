"""The LASEM code's data protocols (lasem.md 1): ``cifar100-lasem`` and ``stl10-lasem``.

- ``cifar100-lasem`` (``--data_type CIFAR100_10 --data_percent 4``): 10 tasks, task k = the k-th
  fine class of each of 10 superclasses (fixed lists, labels = position in the list). Per class,
  the 500 train images are shuffled once into a 416-image train pool and an 83-image validation
  pool, and the first 17 / 3 are kept; the test set is all 100 test images of each class.
- ``officehome-lasem`` (``--data_type OfficeHome``): 10 tasks of 13 classes, Product x G0..G4 then
  Real World x G0..G4 (the code's fixed partition of its 65-class list), labels = position in
  the group; per task and class the images are shuffled and floored to 60% train, 10% val, 30%
  test (``int(n * ratio)``, the remainder unused); 128x128, pixels / 255, no normalisation.
- ``officehome-incremental`` (``officehome_incremental_data``, never wired into the code's
  ``main.py``): Product only, 6 tasks, task j = the first 3 + j of Couch, Table, Paper_Clip,
  Clipboards, Bucket, Notebook, Bed, Trash_Can; the same 60/10/30 split.
- ``stl10-lasem`` (``--data_type STL10_20t``): 20 three-way tasks drawn once (classes, Gaussian
  noise mean in {-0.05,-0.025,0,0.025} and std in {0,0.025} on the [-0.5,0.5] scale, a channel
  permutation; a class set is never repeated). Per class the first 125 of the shuffled 500 train
  images are kept, positions < 18.75 validation (19) and the rest train (106); all 800 test
  images per class. Noise is added (then clipped) and channels permuted on train, val and test.

Deviations, each for a stated reason: the code never seeds its RNG; here the task design and
splits follow ``benchmark.split_seed`` (group r of the code = ``split_seed r``), and STL's noise is
drawn once per task from it rather than afresh each run. Noisy STL images are stored back as
uint8 (a rounding of at most 0.5/255, far below the 0.025 noise). CIFAR's standardisation uses
each task's *training* statistics for all three splits (the code standardises every set with
its own). Office-Home images go through the library's decode cache (shorter side resized
to 128, centre crop; the code resizes the whole image to 128x128 with skimage, changing the
aspect ratio). Office-Home incremental splits each class once and every task reuses that split,
so no image is in one task's training set and another's test set (the code re-splits every
task, which leaks images across tasks, lasem.md 1.3 / 9.3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from . import formats, images
from .augment import AugmentSpec
from .imageset import ImageSet, RowView
from .scenario import Scenario, Task, channel_stats

# lasem.md 1.1: task k = the k-th fine class of each of 10 superclasses (CIFAR-100 fine-label ids).
CIFAR100_LASEM_TASKS = [
    [4, 1, 54, 9, 0, 5, 6, 3, 12, 8], [30, 32, 62, 10, 51, 20, 7, 42, 17, 13],
    [55, 67, 70, 16, 53, 25, 14, 43, 37, 48], [72, 73, 82, 28, 57, 84, 18, 88, 68, 58],
    [95, 91, 92, 61, 83, 94, 24, 97, 76, 90], [22, 23, 15, 34, 26, 2, 27, 36, 47, 41],
    [39, 33, 19, 63, 45, 11, 29, 50, 52, 69], [40, 49, 21, 64, 77, 35, 44, 65, 56, 81],
    [86, 60, 31, 66, 79, 46, 78, 74, 59, 85], [87, 71, 38, 75, 99, 98, 93, 80, 96, 89],
]


def _relabel(data: ImageSet, index: torch.Tensor, label: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(data.images[index.numpy()]), torch.full((len(index),), label, dtype=torch.long)


def _task(i: int, name: str, classes: list[int], names: list[str], parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]],
          per_task_norm: bool = True) -> Task:
    sets = {k: ImageSet(torch.cat([x for x, _ in v]), torch.cat([y for _, y in v]), class_names=names) for k, v in parts.items()}
    mean, std = channel_stats(sets["train"]) if per_task_norm else (None, None)
    return Task(i, name, classes, names, sets["train"], sets["val"], sets["test"], 0, mean, std)


def build_cifar100_lasem(cfg, setting: str, data_root: Path | None, val: float) -> Scenario:
    if setting != "task":
        raise ConfigError("cifar100-lasem is task-incremental only")
    from .benchmarks import _root

    data = formats.load_cifar100(_root(data_root, "cifar100-lasem"))
    rng = np.random.RandomState(cfg.split_seed)
    n_tasks = cfg.tasks or 10
    if not 1 <= n_tasks <= 10:
        raise ConfigError(f"cifar100-lasem has 10 tasks; --tasks {n_tasks} is outside 1..10")
    tasks = []
    for i, classes in enumerate(CIFAR100_LASEM_TASKS[:n_tasks]):
        parts: dict[str, list] = {"train": [], "val": [], "test": []}
        for label, c in enumerate(classes):
            idx = torch.nonzero(data.train.labels == c).flatten()
            idx = idx[torch.from_numpy(rng.permutation(len(idx)))]
            pool_train, pool_val = idx[: int(len(idx) / 1.2)], idx[int(len(idx) / 1.2):]  # 416 / 84 (83 used)
            parts["train"].append(_relabel(data.train, pool_train[:17], label))
            parts["val"].append(_relabel(data.train, pool_val[:3], label))
            parts["test"].append(_relabel(data.test, torch.nonzero(data.test.labels == c).flatten(), label))
        names = [data.fine_names[c] for c in classes]
        tasks.append(_task(i, f"task{i + 1}", classes, names, parts))
    spec = AugmentSpec(size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))  # unused: every task has its own stats
    return Scenario("cifar100-lasem", "task", tasks, spec, 3, [c for t in CIFAR100_LASEM_TASKS[:n_tasks] for c in t])


def stl10_design(n_tasks: int, seed: int, n_classes: int = 10) -> list[tuple[list[int], float, float, list[int]]]:
    """(classes, noise mean, noise std, channel order) per task, as ``experiment_designer`` draws them."""
    rng = np.random.RandomState(seed)
    used: set[frozenset[int]] = set()
    out = []
    while len(out) < n_tasks:
        classes: list[int] = []
        while len(classes) < 3:
            c = int(rng.randint(0, n_classes))
            if c not in classes:
                classes.append(c)
        if frozenset(classes) in used:
            continue
        used.add(frozenset(classes))
        mean, std = 0.025 * int(rng.randint(-2, 2)), 0.025 * int(rng.randint(0, 2))
        out.append((classes, mean, std, [int(v) for v in rng.permutation(3)]))
    return out


def _stl_transform(images: torch.Tensor, mean: float, std: float, order: list[int], gen: torch.Generator) -> torch.Tensor:
    x = images.float() / 255.0 - 0.5
    if mean or std:
        x = (x + mean + std * torch.randn(x.shape, generator=gen)).clamp(-0.5, 0.5)
    x = x[:, order]
    return ((x + 0.5) * 255.0).round().clamp(0, 255).to(torch.uint8)


def build_stl10_lasem(cfg, setting: str, data_root: Path | None, val: float) -> Scenario:
    if setting != "task":
        raise ConfigError("stl10-lasem is task-incremental only")
    from .benchmarks import _root

    data = formats.load_stl10(_root(data_root, "stl10-lasem"))
    n_tasks = cfg.tasks or 20
    design = stl10_design(n_tasks, 1000 + cfg.split_seed)  # the design is shared by all groups in the code
    rng = np.random.RandomState(cfg.split_seed)
    keep_train: dict[int, torch.Tensor] = {}
    keep_val: dict[int, torch.Tensor] = {}
    for c in range(len(data.class_names)):
        idx = torch.nonzero(data.train.labels == c).flatten()
        idx = idx[torch.from_numpy(rng.permutation(len(idx)))][: int(0.25 * len(idx))]  # data_percent 25
        n_val = int(np.ceil(0.15 * len(idx)))  # positions < 0.15 * 125 = 18.75 -> 19
        keep_val[c], keep_train[c] = idx[:n_val], idx[n_val:]
    tasks = []
    for i, (classes, mean, std, order) in enumerate(design):
        gen = torch.Generator().manual_seed(cfg.split_seed * 10_007 + i)
        parts: dict[str, list] = {"train": [], "val": [], "test": []}
        for label, c in enumerate(classes):
            for split, src, idx in (("train", data.train, keep_train[c]), ("val", data.train, keep_val[c]),
                                    ("test", data.test, torch.nonzero(data.test.labels == c).flatten())):
                x, y = _relabel(src, idx, label)
                parts[split].append((_stl_transform(x, mean, std, order, gen), y))
        names = [data.class_names[c] for c in classes]
        tasks.append(_task(i, f"task{i + 1}", classes, names, parts, per_task_norm=False))
    # [-0.5, 0.5] scaling of the code: (x/255 - 0.5) = normalisation with mean 0.5, std 1
    spec = AugmentSpec(size=96, mean=(0.5, 0.5, 0.5), std=(1.0, 1.0, 1.0))
    return Scenario("stl10-lasem", "task", tasks, spec, 3, list(range(len(data.class_names))))


def cifar_files(root: Path) -> list[Path]:
    return [root / "cifar-100-python" / f for f in ("train", "test", "meta")]


def stl_files(root: Path) -> list[Path]:
    return [root / "stl10_binary" / f for f in ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")]


# ---------------------------------------------------------------------------------- Office-Home
# lasem.md 1.2: ``gen_data.py``'s 65-class list, whose ids the partition uses. Its order is not
# Python's sorted() of the folder names: 'TV' comes after 'Trash_Can' (Table = 58, Trash_Can = 62).
OFFICEHOME_CLASSES = [
    "Alarm_Clock", "Backpack", "Batteries", "Bed", "Bike", "Bottle", "Bucket", "Calculator", "Calendar", "Candles",
    "Chair", "Clipboards", "Computer", "Couch", "Curtains", "Desk_Lamp", "Drill", "Eraser", "Exit_Sign", "Fan",
    "File_Cabinet", "Flipflops", "Flowers", "Folder", "Fork", "Glasses", "Hammer", "Helmet", "Kettle", "Keyboard",
    "Knives", "Lamp_Shade", "Laptop", "Marker", "Monitor", "Mop", "Mouse", "Mug", "Notebook", "Oven",
    "Pan", "Paper_Clip", "Pen", "Pencil", "Postit_Notes", "Printer", "Push_Pin", "Radio", "Refrigerator", "Ruler",
    "Scissors", "Screwdriver", "Shelf", "Sink", "Sneakers", "Soda", "Speaker", "Spoon", "Table", "Telephone",
    "ToothBrush", "Toys", "Trash_Can", "TV", "Webcam",
]
# ``_officehome_task_labels``: the hard-coded "random" partition into 5 groups of 13.
OFFICEHOME_GROUPS = [
    [63, 54, 55, 59, 47, 8, 5, 56, 18, 50, 3, 57, 13], [62, 19, 21, 35, 64, 46, 27, 10, 39, 17, 22, 34, 30],
    [48, 15, 51, 6, 40, 31, 4, 36, 45, 41, 16, 14, 11], [9, 29, 1, 44, 33, 26, 25, 32, 53, 12, 43, 38, 60],
    [28, 2, 49, 37, 20, 23, 58, 24, 52, 61, 7, 0, 42],
]
# ``_officehomeincr_task_labels``: Couch, Table, Paper_Clip, Clipboards, Bucket, Notebook, Bed, Trash_Can.
OFFICEHOME_INCREMENTAL = [13, 58, 41, 11, 6, 38, 3, 62]
OFFICEHOME_SPLIT = (0.6, 0.1, 0.3)  # train / val / test, each floored per class
# The code reads Data/OfficeHomeDataset/RealWorld; the published archive names the folder "Real World".
OFFICEHOME_FOLDERS = {"Product": ("Product",), "RealWorld": ("Real World", "RealWorld")}


def officehome_domain(root: Path, domain: str) -> Path:
    """The folder of ``domain``: under ``OfficeHomeDataset_10072016/`` (the published archive),
    ``OfficeHomeDataset/`` (the code's), or directly under ``root``; either spelling of Real World."""
    tried = []
    for base in (root / "OfficeHomeDataset_10072016", root / "OfficeHomeDataset", root):
        for name in OFFICEHOME_FOLDERS[domain]:
            tried.append(base / name)
            if tried[-1].is_dir():
                return tried[-1]
    raise DataError(f"Office-Home domain {domain} not found under --data-root {root} (looked for "
                    f"{', '.join(str(p) for p in tried)}); expected the published archive's "
                    f"OfficeHomeDataset_10072016/<Domain>/<Class>/*.jpg or the domain folders themselves")


def _officehome_images(folder: Path, classes: list[int], size: int) -> tuple[ImageSet, dict[int, torch.Tensor]]:
    """``classes`` of one domain folder decoded once (the cache); rows of each class, in file-name order."""
    files: list[Path] = []
    rows: dict[int, torch.Tensor] = {}
    for c in classes:
        d = folder / OFFICEHOME_CLASSES[c]
        found = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in images.IMAGE_SUFFIXES) if d.is_dir() else []
        if not found:
            raise DataError(f"Office-Home class folder {d} is missing or holds no images")
        rows[c] = torch.arange(len(files), len(files) + len(found))
        files += found
    labels = torch.cat([torch.full((len(rows[c]),), c, dtype=torch.long) for c in classes])
    return ImageSet(images.decode_cached(files, size), labels, class_names=list(OFFICEHOME_CLASSES)), rows


def officehome_split(n: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffled positions floored to 60/10/30 (``int(n * ratio)``; the remainder unused), as ``gen_data.py``."""
    order = rng.permutation(n)
    n_train, n_val, n_test = (int(n * r) for r in OFFICEHOME_SPLIT)
    return order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:n_train + n_val + n_test]


def _officehome_task(i: int, name: str, data: ImageSet, rows: dict[int, torch.Tensor], classes: list[int],
                     splits: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Task:
    names = [OFFICEHOME_CLASSES[c] for c in classes]
    sets = []
    for k in range(3):
        idx = [rows[c][torch.from_numpy(splits[c][k])] for c in classes]
        labels = torch.cat([torch.full((len(x),), label, dtype=torch.long) for label, x in enumerate(idx)])
        sets.append(RowView([(data, torch.cat(idx))], labels, None, names))
    return Task(i, name, list(classes), names, sets[0], sets[1], sets[2])


def _officehome_spec(cfg) -> tuple[int, AugmentSpec]:
    size = cfg.image_size or 128  # lasem.md 1.2: 128x128x3
    return size, AugmentSpec(size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # pixels / 255, [0, 1]


def _officehome_count(cfg, name: str, total: int) -> int:
    n = cfg.tasks or total
    if not 1 <= n <= total:
        raise ConfigError(f"{name} has {total} tasks; --tasks {n} is outside 1..{total}")
    return n


def build_officehome_lasem(cfg, setting: str, data_root: Path | None, val: float) -> Scenario:
    if setting != "task":
        raise ConfigError("officehome-lasem is task-incremental only")
    from .benchmarks import _root

    root = _root(data_root, "officehome-lasem")
    size, spec = _officehome_spec(cfg)
    plan = [(d, g) for d in ("Product", "RealWorld") for g in range(5)][:_officehome_count(cfg, "officehome-lasem", 10)]
    rng = np.random.RandomState(cfg.split_seed)
    loaded = {d: _officehome_images(officehome_domain(root, d), sorted({c for dd, g in plan if dd == d for c in OFFICEHOME_GROUPS[g]}), size)
              for d in dict.fromkeys(d for d, _ in plan)}
    tasks = []
    for i, (domain, g) in enumerate(plan):
        data, rows = loaded[domain]
        classes = OFFICEHOME_GROUPS[g]
        splits = {c: officehome_split(len(rows[c]), rng) for c in classes}  # a fresh split per task and class
        tasks.append(_officehome_task(i, f"{domain.lower()}-g{g}", data, rows, classes, splits))
    return Scenario("officehome-lasem", "task", tasks, spec, 3, [c for _, g in plan for c in OFFICEHOME_GROUPS[g]])


def build_officehome_incremental(cfg, setting: str, data_root: Path | None, val: float) -> Scenario:
    if setting != "task":
        raise ConfigError("officehome-incremental is task-incremental only")
    from .benchmarks import _root

    root = _root(data_root, "officehome-incremental")
    size, spec = _officehome_spec(cfg)
    n = _officehome_count(cfg, "officehome-incremental", 6)
    used = OFFICEHOME_INCREMENTAL[:n + 2]
    data, rows = _officehome_images(officehome_domain(root, "Product"), used, size)
    rng = np.random.RandomState(cfg.split_seed)
    splits = {c: officehome_split(len(rows[c]), rng) for c in used}  # once per class, shared by every task
    tasks = [_officehome_task(j, f"task{j + 1}-{3 + j}way", data, rows, OFFICEHOME_INCREMENTAL[:3 + j], splits) for j in range(n)]
    return Scenario("officehome-incremental", "task", tasks, spec, 3, list(used))


def _domain_path(root: Path, domain: str) -> Path:
    try:
        return officehome_domain(root, domain)
    except DataError:
        return root / "OfficeHomeDataset_10072016" / OFFICEHOME_FOLDERS[domain][0]  # reported as missing


def officehome_files(root: Path) -> list[Path]:
    return [_domain_path(root, "Product"), _domain_path(root, "RealWorld")]


def officehome_incremental_files(root: Path) -> list[Path]:
    return [_domain_path(root, "Product")]
