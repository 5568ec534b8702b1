"""Fixtures that write tiny datasets in the exact published on-disk formats."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _py2_style_pickle(obj: object, path: Path, numpy_core_name: str = "numpy.core") -> None:
    """Protocol-2 pickle with bytes keys/names, as Python 2 wrote CIFAR-100 and Python 3 reads it back
    with ``encoding="bytes"``; NumPy's module path set to ``numpy_core_name``."""
    data = pickle.dumps(obj, protocol=2)
    data = data.replace(b"numpy._core.multiarray", numpy_core_name.encode() + b".multiarray")
    path.write_bytes(data)


def write_cifar100(root: Path, per_class_train: int = 3, per_class_test: int = 2, numpy_core_name: str = "numpy.core",
                   seed: int = 0) -> Path:
    """``root/cifar-100-python/{train,test,meta}``: 100 fine classes in 20 coarse groups of 5."""
    rng = np.random.RandomState(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    fine_names = [f"fine{c:02d}" for c in range(100)]
    # A scrambled fine->coarse assignment (5 per coarse), so the preset's grouping is really tested.
    fine_to_coarse = rng.permutation(np.repeat(np.arange(20), 5))
    coarse_names = [f"coarse{c:02d}" for c in range(20)]
    meta = {b"fine_label_names": [n.encode() for n in fine_names], b"coarse_label_names": [n.encode() for n in coarse_names]}
    _py2_style_pickle(meta, folder / "meta", numpy_core_name)
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        fine = np.repeat(np.arange(100), n)
        data = np.zeros((len(fine), 3072), dtype=np.uint8)
        # Each image's first red pixel encodes its fine class; the rest is noise.
        data[:] = rng.randint(0, 256, size=data.shape)
        data[:, 0] = fine
        d = {b"data": data, b"fine_labels": fine.tolist(), b"coarse_labels": fine_to_coarse[fine].tolist(),
             b"filenames": [f"{i}.png".encode() for i in range(len(fine))], b"batch_label": b"training batch 1 of 1"}
        _py2_style_pickle(d, folder / split, numpy_core_name)
    return root


def write_stl10(root: Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> Path:
    """``root/stl10_binary/{train,test}_{X,y}.bin`` (column-major 3x96x96, labels 1..10), class_names.txt."""
    rng = np.random.RandomState(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % 10 + 1).astype(np.uint8)
        images = rng.randint(0, 256, size=(n, 3, 96, 96)).astype(np.uint8)  # (N, C, H, W), row-major
        images.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")  # the binaries are column-major
        labels.tofile(folder / f"{split}_y.bin")
        np.save(root / f"{split}_expected.npy", images)
    return root


def write_image_folder(root: Path, classes: list[str], per_class: int, size: tuple[int, int] = (20, 16), seed: int = 0) -> Path:
    rng = np.random.RandomState(seed)
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.randint(0, 256, size=(size[1], size[0], 3)).astype(np.uint8)
            arr[..., 0] = ci * 40  # class-dependent colour
            Image.fromarray(arr).save(root / c / f"img{i}.png")
    return root


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    return write_cifar100(tmp_path / "data")


@pytest.fixture
def stl_root(tmp_path: Path) -> Path:
    return write_stl10(tmp_path / "data")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoded-image caches go to the test's own folder, never the user's home."""
    monkeypatch.setenv("LIFELONG_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every test: one intra-op thread. The models are tiny, so one thread is as fast as two on a
    quiet machine, and on a busy shared one it avoids threads waiting on each other (the suite took
    36 minutes there with torch's default of one thread per core, 4 with one)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def deterministic() -> None:
    import torch

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)
