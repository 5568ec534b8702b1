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

from ..errors import ConfigError, DataError
from . import formats, images
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


@dataclass
class Benchmark:
    name: str
    settings: tuple[str, ...]
    description: str
    build: Callable[[BenchmarkConfig, str, Path | None, float], Scenario]
    files: Callable[[Path], list[Path]] = field(default=lambda root: [])

    def data_present(self, data_root: Path | None) -> bool:
        needed = self.files(Path(data_root or "."))
        return all(p.exists() for p in needed)


CIFAR_MEAN, CIFAR_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _order(cfg: BenchmarkConfig, n: int, default: list[int]) -> list[int]:
    order = list(cfg.class_order) if cfg.class_order is not None else default
    if sorted(order) != list(range(n)):
        raise ConfigError(f"class_order must be a permutation of 0..{n - 1} (got {len(order)} entries)")
    return order


def _val(cfg: BenchmarkConfig, preferred: float) -> float:
    return preferred if cfg.val_fraction is None else cfg.val_fraction


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
        groups = class_groups(order, setting, cfg.tasks or (5 if cfg.base is None and cfg.increment is None else None), cfg.base, cfg.increment)
    tasks = build_tasks(train, test, groups, names, setting, _val(cfg, val), cfg.split_seed)
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

        tasks += build_tasks(permute(train), permute(test), [list(range(10))], names, "task", _val(cfg, val),
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
    tasks = build_tasks(data.train, data.test, groups, data.fine_names, setting, _val(cfg, val), cfg.split_seed,
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
    tasks = build_tasks(data.train, data.test, groups, data.fine_names, setting, _val(cfg, val), cfg.split_seed,
                        per_task_norm=bool(cfg.per_task_norm))
    spec = AugmentSpec(size=32, crop_padding=4, flip=True, mean=CIFAR_MEAN, std=CIFAR_STD)
    return Scenario("cifar100", setting, tasks, spec, 3, order)


def build_stl10(cfg: BenchmarkConfig, setting: str, data_root: Path | None, val: float) -> Scenario:
    """STL-10 labelled splits (5,000 train / 8,000 test, 96x96); 5 tasks of 2 classes in label order by default."""
    data = formats.load_stl10(_root(data_root, "stl10"))
    order = _order(cfg, len(data.class_names), list(range(len(data.class_names))))
    groups = class_groups(order, setting, cfg.tasks or (5 if cfg.base is None and cfg.increment is None else None), cfg.base, cfg.increment)
    tasks = build_tasks(data.train, data.test, groups, data.class_names, setting, _val(cfg, val), cfg.split_seed,
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
    tasks = build_tasks(train, test, groups, train.class_names, setting, _val(cfg, val), cfg.split_seed,
                        per_task_norm=bool(cfg.per_task_norm))
    return Scenario(name, setting, tasks, spec, 3, order)


def build_folder(cfg: BenchmarkConfig, setting: str, data_root: Path | None, val: float) -> Scenario:
    """The user's folder: ``root/<class>/*`` (seeded test split) or ``root/{train,test}/<class>/*``."""
    root = _root(data_root, "folder")
    stored, spec = _folder_spec(cfg)
    if (root / "train").is_dir() and ((root / "test").is_dir() or (root / "val").is_dir()):
        train = images.load_folder(root / "train", stored)
        test = images.load_folder(root / "test" if (root / "test").is_dir() else root / "val", stored)
        if train.class_names != test.class_names:
            raise DataError(f"{root}/train and its test folder have different class folders; they must match")
    else:
        full = images.load_folder(root, stored)
        keep, held = stratified_split(full.labels, cfg.test_fraction, cfg.split_seed + 12345)
        train, test = full.subset(keep), full.subset(held)
    return _stream(cfg, setting, "folder", train, test, val, spec)


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
                  build_stl10, lambda r: [r / "stl10_binary" / f for f in ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")]),
        Benchmark("folder", ("task", "class"), "your image folder: root/<class>/* or root/{train,test}/<class>/*",
                  build_folder, lambda r: [r]),
        Benchmark("list", ("class", "task"), "'path label' list files (train.txt, val.txt) under --data-root, as BiC's ImageNet",
                  build_list, lambda r: [r / "train.txt", r / "val.txt"]),
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
