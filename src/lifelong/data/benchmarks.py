"""Benchmark presets: a name, the settings it supports, its data files, and how to build it.

Every preset's protocol choices (task order, class order, splits, augmentation)
are written here once, with their source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from . import dct, formats, idx, images, lasem_data
from .augment import AugmentSpec
from .imageset import ImageSet
from .scenario import Scenario, build_tasks, class_groups, legacy_permutation, stratified_split


@dataclass
class BenchmarkConfig:
    """Options of a benchmark; ``--tasks/--base/--increment`` and ``--set benchmark.KEY=VALUE`` set them."""

    tasks: int | None = None  # number of tasks (equal splits); preset default if unset
    base: int | None = None  # class-incremental: classes in the first step
    increment: int | None = None  # class-incremental: classes per later step
    class_order: list[int] | None = None  # dataset class ids; preset default (e.g. seed-1993 permutation) if unset
    class_order_seed: int = 1993  # iCaRL/LUCIR/BiC order seed (manets.md 1.2, bic.md)
    val_fraction: float | None = None  # held out of each task's train split; None = the method's preference
    split_seed: int = 0  # fixed seed of held-out splits (part of the protocol, not of the run)
    test_fraction: float = 0.25  # digits and folders without a test split
    image_size: int | None = None  # network input size for image folders / lists (default 64)
    per_task_norm: bool | None = None  # normalise with each task's own mean/std (CPG CIFAR protocol)
    train_list: str = "train.txt"  # list benchmark: files under --data-root
    test_list: str = "val.txt"
    task_sizes: list[int] | None = None  # folder/list: classes per task in class order, for unequal tasks
    per_class: int | None = None  # cap on TRAIN images per class: stratified, seeded by split_seed, before task splits
    datasets: list[str] | None = None  # dct: dataset folders in task order (default: ROOT/tasks.txt, else all, sorted)


@dataclass
class Benchmark:
    name: str
    settings: tuple[str, ...]
    description: str
    build: Callable[[BenchmarkConfig, str, Path | None, float], Scenario]
    files: Callable[[Path], list[Path]] = field(default=lambda root: [])
    # Presets that search several folders (IDX: --data-root, its subfolders, a system copy):
    # data_root -> (folder where the files are or None, the places looked at).
    find: Callable[[Path | None], tuple[Path | None, list[Path]]] | None = None

    @property
    def embedded(self) -> bool:
        return self.find is None and not self.files(Path("."))

    def locate(self, data_root: Path | None) -> tuple[Path | None, list[Path]]:
        """Where this preset's files are (``None`` if not all there) and what was looked for."""
        if self.find is not None:
            return self.find(Path(data_root).expanduser() if data_root else None)
        if data_root is None:
            return None, []
        root = Path(data_root).expanduser()
        needed = self.files(root)
        missing = [p for p in needed if not p.exists()]
        return (None, missing) if missing else (root, needed)

    def data_present(self, data_root: Path | None) -> bool:
        return self.embedded or self.locate(data_root)[0] is not None


CIFAR_MEAN, CIFAR_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _order(cfg: BenchmarkConfig, n: int, default: list[int]) -> list[int]:
    order = list(cfg.class_order) if cfg.class_order is not None else default
    if sorted(order) != list(range(n)):
        raise ConfigError(f"class_order must be a permutation of 0..{n - 1} (got {len(order)} entries)")
    return order


def _val(cfg: BenchmarkConfig, preferred: float) -> float:
    return preferred if cfg.val_fraction is None else cfg.val_fraction


def per_class_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of at most ``n`` rows per class, drawn with a seeded permutation per class."""
    gen = np.random.RandomState(seed)
    lab = labels.numpy()
    keep = []
    for c in np.unique(lab):
        idx = np.flatnonzero(lab == c)
        keep.append(idx[gen.permutation(len(idx))[:n]] if len(idx) > n else idx)
    return torch.as_tensor(np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64), dtype=torch.long)


def cap_per_class(train: ImageSet, cfg: BenchmarkConfig) -> ImageSet:
    """``benchmark.per_class``: a stratified train subset for quick runs (the test split is never cut).

    Seeded by ``split_seed`` (part of the protocol, like the held-out splits), so every run and
    every task of a permuted/rotated stream sees the same images. Idempotent.
    """
    n = cfg.per_class
    if n is None:
        return train
    if n < 1:
        raise ConfigError(f"benchmark.per_class={n} must be at least 1 (or unset for the whole train split)")
    if not len(train) or int(torch.bincount(train.labels).max()) <= n:
        return train
    return train.subset(per_class_subset(train.labels, n, cfg.split_seed + 777))


def _tasks(cfg: BenchmarkConfig, train: ImageSet, *args, **kwargs) -> list:
    """``build_tasks`` after the train cap: the one place every preset's train split passes."""
    return build_tasks(cap_per_class(train, cfg), *args, **kwargs)


def _digits_split(cfg: BenchmarkConfig) -> tuple[ImageSet, ImageSet, list[str]]:
    full, names = formats.load_digits_images()
    # A fixed stratified test split (split_seed, not the run seed): the protocol does not vary between runs.
    keep, held = stratified_split(full.labels, cfg.test_fraction, cfg.split_seed + 12345)
    return full.subset(keep), full.subset(held), names


def build_digits(cfg: BenchmarkConfig, setting: str, data_root: Path | None, val: float) -> Scenario:
    train, test, names = _digits_split(cfg)
    order = _order(cfg, 10, list(range(10)))
    if setting == "class" and cfg.tasks is None and cfg.base is None and cfg.increment is None:
        groups = class_groups(order, setting, None, 2, 2)
    else:
        increment = cfg.increment or (2 if setting == "class" and cfg.base is not None else None)  # B2+2's step
        groups = class_groups(order, setting, cfg.tasks or (5 if cfg.base is None and cfg.increment is None else None), cfg.base, increment)
    tasks = _tasks(cfg, train, test, groups, names, setting, _val(cfg, val), cfg.split_seed)
    spec = AugmentSpec(size=8, mean=(0.3,), std=(0.4,))
    return Scenario("digits", setting, tasks, spec, 1, order)


def build_permuted_digits(cfg: BenchmarkConfig, setting: str, data_root: Path | None, val: float) -> Scenario:
    train, test, names = _digits_split(cfg)
    n = cfg.tasks or 10
    if n < 1:
        raise ConfigError(f"--tasks {n} must be at least 1")
    tasks = []
    for t in range(n):
        # Task 1 is the plain images; task t>1 a fixed permutation seeded by t (same in every run).
        perm = torch.arange(64) if t == 0 else torch.from_numpy(np.random.RandomState(1000 + t).permutation(64))

        def permute(s: ImageSet, p=perm) -> ImageSet:
            imgs = s.images.reshape(len(s), 1, 64)[:, :, p].reshape(len(s), 1, 8, 8)
            return ImageSet(imgs.contiguous(), s.labels, None, names)

        tasks += _tasks(cfg, permute(train), permute(test), [list(range(10))], names, "task", _val(cfg, val),
                             cfg.split_seed + t, names=[f"perm{t}"])
        tasks[-1].id = t
    return Scenario("permuted-digits", "task", tasks, AugmentSpec(size=8, mean=(0.3,), std=(0.4,)), 1, list(range(10)))


def build_cifar100_superclass20(cfg: BenchmarkConfig, setting: str, data_root: Path | None, val: float) -> Scenario:
    """CPG protocol (cpg.md 2.1): one task per coarse label in coarse-id order, fine classes sorted by name."""
    data = formats.load_cifar100(_root(data_root, "cifar100-superclass20"))
    coarse_of = {}
    for fine, coarse in zip(data.train.labels.tolist(), data.train_coarse.tolist()):
        coarse_of[fine] = coarse
    groups = []
    for c in range(len(data.coarse_names)):
        fines = [f for f in range(len(data.fine_names)) if coarse_of.get(f) == c]
        groups.append(sorted(fines, key=lambda f: data.fine_names[f]))
    groups = [g for g in groups if g]
    per_task = True if cfg.per_task_norm is None else cfg.per_task_norm
    tasks = _tasks(cfg, data.train, data.test, groups, data.fine_names, setting, _val(cfg, val), cfg.split_seed,
                        names=[data.coarse_names[c] for c in range(len(groups))], per_task_norm=per_task)
    spec = AugmentSpec(size=32, crop_padding=4, flip=True, mean=CIFAR_MEAN, std=CIFAR_STD)
    order = [c for g in groups for c in g]
    return Scenario("cifar100-superclass20", setting, tasks, spec, 3, order)


def build_cifar100(cfg: BenchmarkConfig, setting: str, data_root: Path | None, val: float) -> Scenario:
    """Class setting: B50 + steps of ``--increment`` (default 10; 10/5/2 = the 5/10/25-step protocols of
    manets.md 1.1) over the seed-1993 order (manets.md 1.2), ``--base`` for others (B0: --base 10
    --increment 10); task setting: 10 tasks of 10."""
    data = formats.load_cifar100(_root(data_root, "cifar100"))
    order = _order(cfg, 100, legacy_permutation(100, cfg.class_order_seed))
    if setting == "class" and cfg.base is None and cfg.tasks is None:
        groups = class_groups(order, setting, None, 50, cfg.increment or 10)
    else:
        groups = class_groups(order, setting, cfg.tasks or (10 if cfg.base is None and cfg.increment is None else None), cfg.base, cfg.increment)
    tasks = _tasks(cfg, data.train, data.test, groups, data.fine_names, setting, _val(cfg, val), cfg.split_seed,
                        per_task_norm=bool(cfg.per_task_norm))
    spec = AugmentSpec(size=32, crop_padding=4, flip=True, mean=CIFAR_MEAN, std=CIFAR_STD)
    return Scenario("cifar100", setting, tasks, spec, 3, order)


def build_stl10(cfg: BenchmarkConfig, setting: str, data_root: Path | None, val: float) -> Scenario:
    """STL-10 labelled splits (5,000 train / 8,000 test, 96x96); 5 tasks of 2 classes in label order by default."""
    data = formats.load_stl10(_root(data_root, "stl10"))
    order = _order(cfg, len(data.class_names), list(range(len(data.class_names))))
    groups = class_groups(order, setting, cfg.tasks or (5 if cfg.base is None and cfg.increment is None else None), cfg.base, cfg.increment)
    tasks = _tasks(cfg, data.train, data.test, groups, data.class_names, setting, _val(cfg, val), cfg.split_seed,
                        per_task_norm=bool(cfg.per_task_norm))
    size = cfg.image_size or 96
    spec = AugmentSpec(size=size, crop_padding=size // 8, flip=True, mean=(0.447, 0.440, 0.407), std=(0.260, 0.257, 0.271))
    return Scenario("stl10", setting, tasks, spec, 3, order)


def _folder_spec(cfg: BenchmarkConfig) -> tuple[int, AugmentSpec]:
    """Small images: stored at input size, RandomCrop with padding; large (>=128): stored at 8/7 size, RandomResizedCrop."""
    size = cfg.image_size or 64
    if size < 8:
        raise ConfigError(f"image_size {size} is too small; use at least 8")
    if size >= 128:
        return round(size * 256 / 224), AugmentSpec(size=size, flip=True, random_resized_crop=True, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return size, AugmentSpec(size=size, crop_padding=size // 8, flip=True, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _stream(cfg: BenchmarkConfig, setting: str, name: str, train: ImageSet, test: ImageSet, val: float, spec: AugmentSpec) -> Scenario:
    n = len(train.class_names)
    order = _order(cfg, n, list(range(n)))
    if cfg.task_sizes:  # unequal tasks, consecutive in the class order (e.g. CPG's fine-grained stream)
        sizes = list(cfg.task_sizes)
        if min(sizes) < 1 or sum(sizes) != n or (cfg.tasks is not None and cfg.tasks != len(sizes)):
            raise ConfigError(f"task_sizes {sizes} must be positive, sum to the {n} classes and agree with --tasks")
        groups = [order[sum(sizes[:i]):sum(sizes[:i + 1])] for i in range(len(sizes))]
    else:
        groups = class_groups(order, setting, cfg.tasks if (cfg.tasks or cfg.base or cfg.increment) else min(5, n), cfg.base, cfg.increment)
    tasks = _tasks(cfg, train, test, groups, train.class_names, setting, _val(cfg, val), cfg.split_seed,
                        per_task_norm=bool(cfg.per_task_norm))
    return Scenario(name, setting, tasks, spec, 3, order)


def build_folder(cfg: BenchmarkConfig, setting: str, data_root: Path | None, val: float) -> Scenario:
    """The user's folder: ``root/<class>/*`` (seeded test split) or ``root/{train,test}/<class>/*``."""
    root = _root(data_root, "folder")
    stored, spec = _folder_spec(cfg)
    train, test = folder_splits(root, stored, cfg)
    return _stream(cfg, setting, "folder", train, test, val, spec)


def folder_splits(root: Path, stored: int, cfg: BenchmarkConfig) -> tuple[ImageSet, ImageSet]:
    """``root/{train,test|val}/<class>/*``, or ``root/<class>/*`` with a seeded ``test_fraction`` per class
    held out: the folder benchmark's splits, and a task folder's for ``lifelong learn``."""
    if (root / "train").is_dir() and ((root / "test").is_dir() or (root / "val").is_dir()):
        train = images.load_folder(root / "train", stored)
        test = images.load_folder(root / "test" if (root / "test").is_dir() else root / "val", stored)
        if train.class_names != test.class_names:
            raise DataError(f"{root}/train and its test folder have different class folders; they must match")
        return train, test
    full = images.load_folder(root, stored)
    keep, held = stratified_split(full.labels, cfg.test_fraction, cfg.split_seed + 12345)
    return full.subset(keep), full.subset(held)


def build_list(cfg: BenchmarkConfig, setting: str, data_root: Path | None, val: float) -> Scenario:
    """``path label`` list files (BiC's ImageNet lists) under --data-root, images relative to it."""
    root = _root(data_root, "list")
    stored, spec = _folder_spec(cfg)
    names_file = root / "classes.txt"
    names = names_file.read_text().split() if names_file.is_file() else None
    train = images.load_list(root / cfg.train_list, root, stored, names)
    test = images.load_list(root / cfg.test_list, root, stored, train.class_names)
    n = max(len(train.class_names), int(test.labels.max()) + 1)
    if n > len(train.class_names):
        raise DataError(f"{root / cfg.test_list} has labels beyond the {len(train.class_names)} classes of {root / cfg.train_list}")
    return _stream(cfg, setting, "list", train, test, val, spec)


# ---------------------------------------------------------------- IDX: MNIST and Fashion-MNIST
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# Debian's package dataset-fashion-mnist puts the four published .gz files here; read when there is no --data-root.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class IdxDataset:
    """One dataset published as the four IDX files; the test split is always the official t10k one."""

    name: str  # the preset and the --data-root subfolder, e.g. "fashion-mnist"
    torchvision: str  # torchvision's folder: <root>/<torchvision>/raw
    title: str
    class_names: tuple[str, ...]
    mean: float  # of the train images in [0, 1]
    std: float
    source: str


# MNIST (LeCun et al. 1998). Mean/std of the 60,000 train images (47,040,000 pixels, in [0, 1]):
# the values of PyTorch's MNIST example (github.com/pytorch/examples, mnist/main.py); MNIST is
# not installed on the machine where Fashion-MNIST's were measured.
MNIST = IdxDataset("mnist", "MNIST", "MNIST", tuple(str(c) for c in range(10)), 0.1307, 0.3081,
                   "put the four files of https://yann.lecun.com/exdb/mnist/ (or a mirror) there")
# Fashion-MNIST (Xiao, Rasul & Vollgraf 2017). Mean/std measured once with
# ``channel_stats(load_idx(FASHION_MNIST, None).train)`` on Debian's copy (2026): 0.28604, 0.35302.
FASHION_MNIST = IdxDataset("fashion-mnist", "FashionMNIST", "Fashion-MNIST",
                           ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
                           0.2860, 0.3530,
                           "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or put the four files of "
                           "https://github.com/zalandoresearch/fashion-mnist there")


def idx_file(folder: Path, stem: str) -> Path | None:
    """``stem`` or ``stem.gz`` in ``folder``; the uncompressed one first (no gunzip needed)."""
    for p in (folder / stem, folder / f"{stem}.gz"):
        if p.is_file():
            return p
    return None


def _idx_folders(ds: IdxDataset, data_root: Path | None) -> list[Path]:
    """Where the files may be: the dataset's own subfolders before --data-root itself; the system copy without it."""
    if data_root is not None:
        return [data_root / ds.name, data_root / ds.torchvision / "raw", data_root]
    return [DEBIAN_FASHION_MNIST] if ds is FASHION_MNIST else []


def find_idx(ds: IdxDataset, data_root: Path | None) -> tuple[Path | None, list[Path]]:
    """The first folder holding all four files, and every folder looked at."""
    folders = _idx_folders(ds, data_root)
    for folder in folders:
        if all(idx_file(folder, stem) for stem in IDX_NAMES):
            return folder, folders
    return None, folders


def _idx_missing(ds: IdxDataset, data_root: Path | None, folders: list[Path]) -> DataError:
    files = ", ".join(f"{s}[.gz]" for s in IDX_NAMES)
    if not folders:
        return DataError(f"{ds.title} not found: benchmark {ds.name} reads {files}; pass --data-root DIR holding them "
                         f"(or DIR/{ds.name}, DIR/{ds.torchvision}/raw) and {ds.source}")
    looked = "; ".join(f"{f} ({'missing ' + ', '.join(s for s in IDX_NAMES if not idx_file(f, s)) if f.is_dir() else 'no such folder'})"
                       for f in folders)
    hint = ds.source
    if data_root is not None and ds is FASHION_MNIST and find_idx(ds, None)[0] is not None:
        hint = f"{DEBIAN_FASHION_MNIST} has them: drop --data-root to use it, or {ds.source}"
    return DataError(f"{ds.title} not found: looked for {files} in {looked}; {hint}")


def load_idx(ds: IdxDataset, data_root: Path | None) -> formats.Splits:
    """The official train (60,000) and t10k test (10,000) splits as (N, 1, 28, 28) uint8 sets."""
    folder, looked = find_idx(ds, data_root)
    if folder is None:
        raise _idx_missing(ds, data_root, looked)
    names = list(ds.class_names)
    splits = []
    for images_stem, labels_stem in (IDX_NAMES[:2], IDX_NAMES[2:]):
        images, labels = idx.read_pair(idx_file(folder, images_stem), idx_file(folder, labels_stem), len(names))
        splits.append(ImageSet(torch.from_numpy(images[:, None]), torch.from_numpy(labels), class_names=names))
    return formats.Splits(splits[0], splits[1], names)


def _idx_spec(ds: IdxDataset) -> AugmentSpec:
    """No augmentation (the MNIST-family protocols train on the plain images), the dataset's own statistics."""
    return AugmentSpec(size=28, mean=(ds.mean,), std=(ds.std,))


def _build_idx(ds: IdxDataset, cfg: BenchmarkConfig, setting: str, data_root: Path | None, val: float) -> Scenario:
    """Split MNIST / split Fashion-MNIST: 5 tasks of 2 classes in label order ({0,1}, {2,3}, ...) in both
    settings (Zenke et al. 2017; van de Ven & Tolias 2019, three-scenario protocol); --tasks/--base/--increment."""
    data = load_idx(ds, data_root)
    order = _order(cfg, 10, list(range(10)))
    groups = class_groups(order, setting, cfg.tasks or (5 if cfg.base is None and cfg.increment is None else None), cfg.base, cfg.increment)
    tasks = _tasks(cfg, data.train, data.test, groups, data.class_names, setting, _val(cfg, val), cfg.split_seed,
                   per_task_norm=bool(cfg.per_task_norm))
    return Scenario(ds.name, setting, tasks, _idx_spec(ds), 1, order)


def _task_count(cfg: BenchmarkConfig, default: int = 10) -> int:
    n = cfg.tasks or default
    if n < 1 or cfg.base is not None or cfg.increment is not None:
        raise ConfigError("permuted and rotated streams take --tasks N (N >= 1), not --base/--increment: each task has all 10 classes")
    return n


def pixel_permutation(task: int, pixels: int = 784) -> np.ndarray:
    """Task 0: identity; task t: a fixed permutation seeded by t, identical in every run and on every machine."""
    return np.arange(pixels) if task == 0 else np.random.RandomState(1000 + task).permutation(pixels)


def _transformed_stream(name: str, data: formats.Splits, cfg: BenchmarkConfig, val: float, spec: AugmentSpec,
                        transforms: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]) -> Scenario:
    """One 10-way task per transform of all images (domain-incremental data, run with a head per task)."""
    names = data.class_names
    train = cap_per_class(data.train, cfg).materialize()  # cut before transforming: less to transform and to hold
    tasks = []
    for t, (task_name, fn) in enumerate(transforms):
        tr = ImageSet(fn(train.images), train.labels, None, names)
        te = ImageSet(fn(data.test.images), data.test.labels, None, names)
        tasks += _tasks(cfg, tr, te, [list(range(10))], names, "task", _val(cfg, val), cfg.split_seed + t, names=[task_name])
        tasks[-1].id = t
    return Scenario(name, "task", tasks, spec, 1, list(range(10)))


def _build_permuted(ds: IdxDataset, cfg: BenchmarkConfig, setting: str, data_root: Path | None, val: float) -> Scenario:
    """Permuted MNIST (Goodfellow et al. 2013; Kirkpatrick et al. 2017): task 1 the plain images, task t a fixed
    pixel permutation applied once at load to train and test. Every task holds a copy (about 55 MB each)."""
    n = _task_count(cfg)
    data = load_idx(ds, data_root)

    def permute(perm: np.ndarray) -> Callable[[torch.Tensor], torch.Tensor]:
        p = torch.from_numpy(perm)
        return lambda x: x.reshape(len(x), -1)[:, p].reshape(x.shape).contiguous()

    return _transformed_stream(f"permuted-{ds.name}", data, cfg, val, _idx_spec(ds),
                               [(f"perm{t}", permute(pixel_permutation(t, 28 * 28))) for t in range(n)])


def rotation_angles(n: int) -> list[float]:
    """Evenly spaced over [0, 180): 10 tasks are 0, 18, 36, ..., 162 degrees; task 1 unrotated."""
    return [180.0 * t / n for t in range(n)]


def rotate_images(images: torch.Tensor, degrees: float, chunk: int = 8192) -> torch.Tensor:
    """uint8 (N, C, H, W) rotated counter-clockwise (as displayed, like ``np.rot90`` and torchvision's
    ``rotate``) about the image centre: bilinear resample, zeros outside, rounded back to uint8.

    The sampling grid is computed in float64 from pixel centres, so multiples of 90 degrees land
    exactly on pixels and reproduce ``np.rot90``.
    """
    n, c, h, w = images.shape
    if degrees % 360 == 0:
        return images  # task 1: the plain images, bit for bit
    rad = np.deg2rad(degrees)
    cos, sin = np.cos(rad), np.sin(rad)
    ys, xs = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    # Inverse map: the output pixel (x, y) (y pointing down) reads the source at R(-theta) (x, y).
    src_x = xs * cos - ys * sin + (w - 1) / 2
    src_y = xs * sin + ys * cos + (h - 1) / 2
    grid = torch.from_numpy(np.stack([(2 * src_x + 1) / w - 1, (2 * src_y + 1) / h - 1], -1)).float()[None]
    out = torch.empty_like(images)
    for start in range(0, n, chunk):
        x = images[start:start + chunk].float()
        y = F.grid_sample(x, grid.expand(len(x), h, w, 2), mode="bilinear", padding_mode="zeros", align_corners=False)
        out[start:start + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _build_rotated(ds: IdxDataset, cfg: BenchmarkConfig, setting: str, data_root: Path | None, val: float) -> Scenario:
    """Rotated MNIST (Lopez-Paz & Ranzato 2017, GEM): task t shows every image rotated by ``rotation_angles(N)[t]``,
    resampled once at load (not per batch), train and test alike. Every task holds a copy (about 55 MB each)."""
    n = _task_count(cfg)
    data = load_idx(ds, data_root)
    return _transformed_stream(f"rotated-{ds.name}", data, cfg, val, _idx_spec(ds),
                               [(f"rot{a:g}", lambda x, a=a: rotate_images(x, a)) for a in rotation_angles(n)])


def _idx_benchmarks(ds: IdxDataset) -> list[Benchmark]:
    find = lambda root: find_idx(ds, root)  # noqa: E731
    where = f"IDX files ({'--data-root or Debian dataset-fashion-mnist' if ds is FASHION_MNIST else '--data-root'})"
    return [
        Benchmark(ds.name, ("task", "class"), f"{ds.title} {where}, 5 tasks of 2 classes in label order",
                  lambda c, s, r, v: _build_idx(ds, c, s, r, v), find=find),
        Benchmark(f"permuted-{ds.name}", ("task",), f"{ds.title}, a fixed pixel permutation per task (task 1 plain), 10-way each",
                  lambda c, s, r, v: _build_permuted(ds, c, s, r, v), find=find),
        Benchmark(f"rotated-{ds.name}", ("task",), f"{ds.title} rotated by 180*t/N degrees in task t (0, 18, ..., 162 for N=10), 10-way each",
                  lambda c, s, r, v: _build_rotated(ds, c, s, r, v), find=find),
    ]


def _root(data_root: Path | None, benchmark: str) -> Path:
    if data_root is None:
        raise DataError(f"benchmark {benchmark} reads files from disk: pass --data-root DIR (see README, 'Data preparation')")
    return Path(data_root).expanduser()


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark("digits", ("task", "class"), "scikit-learn's bundled 8x8 digits; task: 5x2 classes, class: B2+2 (embedded)", build_digits),
        Benchmark("permuted-digits", ("task",), "digits with a fixed pixel permutation per task, 10-way each (embedded)", build_permuted_digits),
        Benchmark("cifar100-superclass20", ("task",), "CIFAR-100, 20 tasks = coarse labels, 5 fine classes each (CPG)",
                  build_cifar100_superclass20, lambda r: [r / "cifar-100-python" / f for f in ("train", "test", "meta")]),
        Benchmark("cifar100", ("class", "task"), "CIFAR-100, class: B50 + 10/step, seed-1993 order; task: 10x10",
                  build_cifar100, lambda r: [r / "cifar-100-python" / f for f in ("train", "test", "meta")]),
        Benchmark("stl10", ("task", "class"), "STL-10 binaries, 96x96, 5 tasks of 2 classes",
                  build_stl10, lambda r: [r / "stl10_binary" / f for f in ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt")]),
        Benchmark("folder", ("task", "class"), "your image folder: root/<class>/* or root/{train,test}/<class>/*",
                  build_folder, lambda r: [r]),
        Benchmark("list", ("class", "task"), "'path label' list files (train.txt, val.txt) under --data-root, as BiC's ImageNet",
                  build_list, lambda r: [r / "train.txt", r / "val.txt"]),
        Benchmark("dct", ("task",), "one task per dataset: root/<dataset>/{train,test}/<class>/* (CLR's DCT protocol)", dct.build_dct, lambda r: [r]),
        Benchmark("cifar100-lasem", ("task",), "CIFAR-100, LASEM's 10 fixed tasks of 10 classes, 17 train / 3 val per class",
                  lasem_data.build_cifar100_lasem, lasem_data.cifar_files),
        Benchmark("stl10-lasem", ("task",), "STL-10, LASEM's 20 three-way tasks with per-task noise and channel order",
                  lasem_data.build_stl10_lasem, lasem_data.stl_files),
        Benchmark("officehome-lasem", ("task",), "Office-Home Product + Real World, LASEM's fixed 10 tasks of 13 classes, 60/10/30, 128x128", lasem_data.build_officehome_lasem, lasem_data.officehome_files),
        Benchmark("officehome-incremental", ("task",), "Office-Home Product, 6 tasks of 3..8 classes (LASEM's incremental stream), 60/10/30, 128x128", lasem_data.build_officehome_incremental, lasem_data.officehome_incremental_files),
        *_idx_benchmarks(MNIST),
        *_idx_benchmarks(FASHION_MNIST),
    ]
}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        from difflib import get_close_matches

        close = get_close_matches(name, BENCHMARKS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(BENCHMARKS)}"
        raise ConfigError(f"unknown benchmark {name!r}{hint}")
    return BENCHMARKS[name]


def build_scenario(name: str, setting: str | None, cfg: BenchmarkConfig, data_root: Path | None,
                   method_val_fraction: float = 0.0) -> Scenario:
    bench = get_benchmark(name)
    setting = setting or bench.settings[0]
    if setting not in bench.settings:
        raise ConfigError(f"benchmark {name} supports --setting {' or '.join(bench.settings)}, not {setting!r}")
    return bench.build(cfg, setting, Path(data_root) if data_root else None, method_val_fraction)
