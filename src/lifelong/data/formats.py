"""Readers for the published on-disk formats. Nothing here downloads anything.

Each reader returns uint8 ``ImageSet`` splits with the dataset's own labels and
class names; scenarios (``scenarios.py``) decide task splits and label spaces.
When files are missing the error lists exactly which files were expected where
and where the official archive comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .imageset import ImageSet
from .safe_pickle import load_pickle

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
STL10_URL = "https://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"


def require_files(root: Path, names: list[str], what: str, source: str) -> None:
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        listed = ", ".join(str(root / n) for n in missing)
        raise DataError(f"{what} not found: expected {listed}; {source}")


@dataclass
class Splits:
    train: ImageSet
    test: ImageSet
    class_names: list[str]


# ---------------------------------------------------------------- digits
def load_digits_images() -> tuple[ImageSet, list[str]]:
    """scikit-learn's bundled 1,797 8x8 digits, pixel values 0..16 rescaled to 0..255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    names = [str(c) for c in range(10)]
    return ImageSet(torch.from_numpy(images), torch.as_tensor(bunch.target, dtype=torch.long), class_names=names), names


# ---------------------------------------------------------------- CIFAR-100
def _key(d: dict, name: str):
    """CIFAR pickles come from Python 2: keys are bytes; accept str too."""
    if name.encode() in d:
        return d[name.encode()]
    if name in d:
        return d[name]
    raise DataError(f"CIFAR-100 pickle has no '{name}' entry; re-download {CIFAR100_URL}")


def _names(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


@dataclass
class Cifar100:
    train: ImageSet
    test: ImageSet
    fine_names: list[str]
    coarse_names: list[str]
    train_coarse: torch.Tensor
    test_coarse: torch.Tensor


def load_cifar100(data_root: Path) -> Cifar100:
    """``<data_root>/cifar-100-python/{train,test,meta}`` as published (Python 2 pickles)."""
    root = Path(data_root) / "cifar-100-python"
    require_files(root, ["train", "test", "meta"], "CIFAR-100",
                  f"download and extract {CIFAR100_URL} into {Path(data_root)}")
    meta = load_pickle(root / "meta")
    if not isinstance(meta, dict):
        raise DataError(f"{root / 'meta'} is not a CIFAR-100 meta dictionary")
    fine = _names(_key(meta, "fine_label_names"))
    coarse = _names(_key(meta, "coarse_label_names"))
    splits = []
    for split in ("train", "test"):
        d = load_pickle(root / split)
        if not isinstance(d, dict):
            raise DataError(f"{root / split} is not a CIFAR-100 data dictionary")
        data = np.asarray(_key(d, "data"))
        fl = np.asarray(_key(d, "fine_labels"), dtype=np.int64)
        cl = np.asarray(_key(d, "coarse_labels"), dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(fl) != len(data) or len(cl) != len(data):
            raise DataError(f"{root / split} does not hold N x 3072 uint8 images with one fine and coarse label each")
        if fl.min(initial=0) < 0 or fl.max(initial=0) >= len(fine) or cl.max(initial=0) >= len(coarse):
            raise DataError(f"{root / split} has labels outside the {len(fine)} fine / {len(coarse)} coarse classes of meta")
        images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
        splits.append((ImageSet(images, torch.from_numpy(fl), class_names=fine), torch.from_numpy(cl)))
    (train, train_c), (test, test_c) = splits
    return Cifar100(train, test, fine, coarse, train_c, test_c)


# ---------------------------------------------------------------- STL-10
def _read_stl_split(root: Path, split: str, n_classes: int) -> ImageSet:
    raw = np.fromfile(root / f"{split}_X.bin", dtype=np.uint8)
    labels = np.fromfile(root / f"{split}_y.bin", dtype=np.uint8).astype(np.int64) - 1
    per_image = 3 * 96 * 96
    if raw.size % per_image or raw.size // per_image != labels.size:
        raise DataError(f"{root / (split + '_X.bin')} holds {raw.size} bytes, not {labels.size} images of 3x96x96 "
                        f"matching {root / (split + '_y.bin')}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"{root / (split + '_y.bin')} has labels outside 1..{n_classes}")
    # The binaries are column-major per channel (written from MATLAB): transpose H and W.
    images = raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)
    return ImageSet(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels))


def load_stl10(data_root: Path) -> Splits:
    """``<data_root>/stl10_binary/{train,test}_{X,y}.bin`` and ``class_names.txt``."""
    root = Path(data_root) / "stl10_binary"
    files = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt"]
    require_files(root, files, "STL-10", f"download and extract {STL10_URL} into {Path(data_root)}")
    names = [n.strip() for n in (root / "class_names.txt").read_text().splitlines() if n.strip()]
    train = _read_stl_split(root, "train", len(names))
    test = _read_stl_split(root, "test", len(names))
    train.class_names = test.class_names = names
    return Splits(train, test, names)
