"""Readers of the published formats, on tiny files written in those exact formats."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_cifar100, write_image_folder, write_stl10
from lifelong.data import formats, images
from lifelong.data.safe_pickle import load_pickle
from lifelong.errors import DataError


@pytest.mark.parametrize("core", ["numpy.core", "numpy._core"])
def test_cifar100_reads_both_numpy_module_names(tmp_path: Path, core: str) -> None:
    root = write_cifar100(tmp_path, numpy_core_name=core)
    data = formats.load_cifar100(root)
    assert len(data.train) == 300 and len(data.test) == 200
    assert data.train.images.shape == (300, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.fine_names[:2] == ["fine00", "fine01"] and len(data.coarse_names) == 20
    # The first red pixel encodes the fine label: rows were reshaped as (3, 32, 32) in the right order.
    assert torch.equal(data.train.images[:, 0, 0, 0].long(), data.train.labels)


def test_cifar100_missing_files_names_them(tmp_path: Path) -> None:
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "meta").write_bytes(b"")
    with pytest.raises(DataError) as e:
        formats.load_cifar100(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "cifar-100-python" / "train") in msg and str(tmp_path / "cifar-100-python" / "test") in msg
    assert "cifar-100-python.tar.gz" in msg


def test_cifar100_malformed_pickle(tmp_path: Path) -> None:
    root = write_cifar100(tmp_path)
    (root / "cifar-100-python" / "train").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="train"):
        formats.load_cifar100(root)


def test_cifar100_wrong_shape(tmp_path: Path) -> None:
    root = write_cifar100(tmp_path)
    bad = {b"data": np.zeros((3, 100), np.uint8), b"fine_labels": [0, 1, 2], b"coarse_labels": [0, 0, 0]}
    (root / "cifar-100-python" / "test").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DataError, match="3072"):
        formats.load_cifar100(root)


class _Boom:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_booby_trapped_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps({b"data": _Boom(str(marker))}, protocol=2))
    with pytest.raises(DataError, match="refused to load"):
        load_pickle(path)
    assert not marker.exists()
    # Sanity: an unrestricted load really would have run the payload.
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_restricted_unpickler_allows_plain_containers_and_arrays(tmp_path: Path) -> None:
    path = tmp_path / "ok"
    obj = {b"a": [1, 2.5, "x", b"y", (None, True)], b"arr": np.arange(6, dtype=np.int16).reshape(2, 3)}
    path.write_bytes(pickle.dumps(obj, protocol=2))
    back = load_pickle(path)
    assert back[b"a"] == [1, 2.5, "x", b"y", (None, True)]
    assert np.array_equal(back[b"arr"], obj[b"arr"]) and back[b"arr"].dtype == np.int16


def test_stl10_binaries_are_column_major(tmp_path: Path) -> None:
    root = write_stl10(tmp_path)
    data = formats.load_stl10(root)
    expected = np.load(root / "train_expected.npy")
    assert data.train.images.shape == (20, 3, 96, 96)
    assert np.array_equal(data.train.images.numpy(), expected)
    assert data.train.labels.tolist() == [i % 10 for i in range(20)]  # 1-based on disk
    assert data.class_names[0] == "airplane" and len(data.class_names) == 10


def test_stl10_truncated_file(tmp_path: Path) -> None:
    root = write_stl10(tmp_path)
    p = root / "stl10_binary" / "test_X.bin"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(DataError, match="test_X.bin"):
        formats.load_stl10(root)


def test_stl10_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="stl10_binary.tar.gz"):
        formats.load_stl10(tmp_path)


def test_image_folder_decoded_once_into_cache(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs", ["cat", "apple", "bee"], per_class=3, size=(20, 16))
    cache = tmp_path / "c"
    s = images.load_folder(root, size=12, cache_dir=cache)
    assert s.class_names == ["apple", "bee", "cat"]  # sorted, as ImageFolder
    assert s.images.shape == (9, 3, 12, 12) and s.images.dtype == np.uint8
    assert isinstance(s.images, np.memmap) or isinstance(getattr(s.images, "base", None), np.memmap)
    assert s.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # The class colour survives decoding: red channel = 40 * index of the class in the original list.
    assert abs(int(s.images[0, 0].mean()) - 40) <= 1  # "apple" was class 1 when written
    entries = list(cache.glob("images-*.npy"))
    assert len(entries) == 1
    before = entries[0].stat().st_mtime_ns
    images.load_folder(root, size=12, cache_dir=cache)
    assert entries[0].stat().st_mtime_ns == before  # reused, not decoded again
    images.load_folder(root, size=10, cache_dir=cache)
    assert len(list(cache.glob("images-*.npy"))) == 2  # another size is another entry


def test_list_file_reader(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs", ["a", "b"], per_class=2)
    (root / "train.txt").write_text("a/img0.png 0\na/img1.png 0\nb/img0.png 1\n\nb/img1.png 1\n")
    s = images.load_list(root / "train.txt", root, size=8, cache_dir=tmp_path / "c")
    assert s.labels.tolist() == [0, 0, 1, 1] and s.images.shape == (4, 3, 8, 8)


@pytest.mark.parametrize("line", ["a/img0.png", "a/img0.png x", "a/img0.png -1"])
def test_list_file_bad_line_names_file_and_line(tmp_path: Path, line: str) -> None:
    lst = tmp_path / "train.txt"
    lst.write_text(f"a/b.png 0\n{line}\n")
    with pytest.raises(DataError, match=r"train.txt:2"):
        images.read_list_file(lst, tmp_path)


def test_undecodable_image(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs", ["a"], per_class=1)
    (root / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        images.load_folder(root, size=8, cache_dir=tmp_path / "c")


def test_digits_are_the_bundled_1797() -> None:
    s, names = formats.load_digits_images()
    assert len(s) == 1797 and s.images.shape == (1797, 1, 8, 8) and int(s.images.max()) == 255
    assert names == [str(i) for i in range(10)]
