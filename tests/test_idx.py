"""IDX reader and the MNIST-family presets, on tiny files written byte for byte in the published
format (LeCun et al., yann.lecun.com/exdb/mnist/), and on Debian's real Fashion-MNIST when installed."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong.cli import main
from lifelong.config import resolve
from lifelong.data import benchmarks, idx
from lifelong.data.benchmarks import BenchmarkConfig, build_scenario
from lifelong.errors import ConfigError, DataError

STEMS = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
REAL = Path("/usr/share/datasets/fashion-mnist")
real_data = pytest.mark.skipif(not all((REAL / f"{s}.gz").is_file() for s in STEMS.values()),
                               reason=f"real Fashion-MNIST not installed in {REAL} (apt-get install dataset-fashion-mnist)")


# ---------------------------------------------------------------- fixtures in the published format
def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """Header ``00 00 <type> <ndim>``, big-endian uint32 sizes, then the raw values, as the published files."""
    return bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(np.ascontiguousarray(array, dtype=np.uint8))
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_mnist(folder: Path, gz: bool = True, train_per_class: int = 6, test_per_class: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """The four files in ``folder``; labels shuffled (not sorted); train images 0 and 1 are probes whose
    pixel values spell each pixel's index (i % 256, i // 256), so any pixel permutation can be read back."""
    rng = np.random.RandomState(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(10), n)).astype(np.uint8)
        images = rng.randint(0, 256, size=(len(labels), 28, 28)).astype(np.uint8)
        if split == "train":
            images[0] = (np.arange(784) % 256).reshape(28, 28)
            images[1] = (np.arange(784) // 256).reshape(28, 28)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    suffix = ".gz" if gz else ""
    for key, stem in STEMS.items():
        write_idx(folder / f"{stem}{suffix}", arrays[key], gz)
    return arrays


@pytest.fixture
def mnist_root(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    return tmp_path / "data", write_mnist(tmp_path / "data")


def _fails(capsys: pytest.CaptureFixture, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


# ---------------------------------------------------------------- the reader
def test_fixture_header_is_the_published_one() -> None:
    # MNIST's train-images file starts 00 00 08 03 | 60000 | 28 | 28 (big-endian), its labels 00 00 08 01 | 60000.
    assert idx_bytes(np.zeros((60000, 28, 28), np.uint8))[:16] == bytes.fromhex("00000803 0000ea60 0000001c 0000001c")
    assert idx_bytes(np.zeros(60000, np.uint8))[:8] == bytes.fromhex("00000801 0000ea60")


@pytest.mark.parametrize("gz", [True, False])
def test_reader_returns_exactly_what_was_written(tmp_path: Path, gz: bool) -> None:
    arrays = write_mnist(tmp_path, gz=gz)
    s = ".gz" if gz else ""
    images, labels = idx.read_pair(tmp_path / f"{STEMS['train_images']}{s}", tmp_path / f"{STEMS['train_labels']}{s}")
    assert images.dtype == np.uint8 and images.shape == (60, 28, 28) and images.flags.writeable
    assert np.array_equal(images, arrays["train_images"]) and np.array_equal(labels, arrays["train_labels"])
    assert labels.dtype == np.int64


def test_compression_is_detected_by_content_not_name(tmp_path: Path) -> None:
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)  # dims come from the header, not assumed 28x28
    raw_named_gz = tmp_path / "x-images-idx3-ubyte.gz"
    raw_named_gz.write_bytes(idx_bytes(a))
    gz_named_raw = tmp_path / "y-images-idx3-ubyte"
    gz_named_raw.write_bytes(gzip.compress(idx_bytes(a)))
    assert np.array_equal(idx.read_images(raw_named_gz), a) and np.array_equal(idx.read_images(gz_named_raw), a)


@pytest.mark.parametrize("defect,needle", [
    ("labels-magic", "0x00000801"),  # a labels file where images belong
    ("float-type", "type 0x0d"),  # a valid IDX header of another type code
    ("truncated", "truncated"),
    ("truncated-gz", "gzip"),
    ("too-long", "longer than its header"),
    ("count", "60 images but"),
])
def test_broken_files_exit_2_with_one_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture, defect: str,
                                                           needle: str) -> None:
    root = tmp_path / "data"
    arrays = write_mnist(root)
    bad = root / f"{STEMS['train_images']}.gz"
    data = idx_bytes(arrays["train_images"])
    if defect == "labels-magic":
        bad.write_bytes(gzip.compress(idx_bytes(arrays["train_labels"])))
    elif defect == "float-type":
        bad.write_bytes(gzip.compress(idx_bytes(arrays["train_images"], type_code=0x0D)))
    elif defect == "truncated":
        bad.write_bytes(gzip.compress(data[:-100]))
    elif defect == "truncated-gz":
        bad.write_bytes(gzip.compress(data)[:-50])
    elif defect == "too-long":
        bad.write_bytes(gzip.compress(data + b"\x00" * 5))
    elif defect == "count":
        write_idx(root / f"{STEMS['train_labels']}.gz", arrays["train_labels"][:-1], gz=True)
    _fails(capsys, ["run", "--method", "finetune", "--benchmark", "mnist", "--data-root", str(root), "--out", str(tmp_path / "r"),
                    "--epochs", "1", "--quiet"], str(bad), needle)


def test_labels_outside_ten_classes(tmp_path: Path) -> None:
    arrays = write_mnist(tmp_path)
    arrays["test_labels"][3] = 10
    write_idx(tmp_path / f"{STEMS['test_labels']}.gz", arrays["test_labels"], gz=True)
    with pytest.raises(DataError, match="t10k-labels.*label 10"):
        benchmarks.load_idx(benchmarks.MNIST, tmp_path)


# ---------------------------------------------------------------- task splits
def _expected(arrays: dict[str, np.ndarray], split: str, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    lab = arrays[f"{split}_labels"]
    keep = np.isin(lab, classes)
    return arrays[f"{split}_images"][keep], lab[keep]


@pytest.mark.parametrize("setting", ["task", "class"])
def test_mnist_five_tasks_of_two_in_label_order(mnist_root, setting: str) -> None:
    root, arrays = mnist_root
    s = build_scenario("mnist", setting, BenchmarkConfig(), root)
    assert [t.classes for t in s.tasks] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert s.augment.size == 28 and s.in_channels == 1 and s.augment.mean == (0.1307,)
    for t in s.tasks:
        for split, data in (("train", t.train), ("test", t.test)):
            images, labels = _expected(arrays, split, t.classes)
            assert np.array_equal(data.images.numpy()[:, 0], images)  # the official split, file order kept
            want = labels.astype(np.int64) - (t.classes[0] if setting == "task" else 0)  # task: 0/1; class: the label
            assert data.labels.tolist() == want.tolist()
        assert t.offset == (0 if setting == "task" else 2 * t.id)
    custom = build_scenario("fashion-mnist", "class", BenchmarkConfig(base=4, increment=2), _copy_as(root, "fashion-mnist"))
    assert [t.classes for t in custom.tasks] == [[0, 1, 2, 3], [4, 5], [6, 7], [8, 9]]
    assert custom.tasks[0].class_names[0] == "T-shirt/top"


def _copy_as(root: Path, name: str) -> Path:
    """The same files under <parent>/data2/<name>, the per-dataset subfolder layout."""
    target = root.parent / "data2"
    (target / name).mkdir(parents=True)
    for p in root.iterdir():
        (target / name / p.name).write_bytes(p.read_bytes())
    return target


def test_permuted_task1_plain_bijections_fixed(mnist_root) -> None:
    root, arrays = mnist_root
    s = build_scenario("permuted-mnist", "task", BenchmarkConfig(tasks=4), root)
    again = build_scenario("permuted-mnist", "task", BenchmarkConfig(tasks=4), root)
    assert [t.name for t in s.tasks] == ["perm0", "perm1", "perm2", "perm3"]
    plain = arrays["train_images"].reshape(-1, 784)
    perms = []
    for t, t2 in zip(s.tasks, again.tasks):
        imgs = t.train.images.numpy().reshape(-1, 784).astype(np.int64)
        assert t.classes == list(range(10)) and t.train.labels.tolist() == arrays["train_labels"].tolist()
        perm = imgs[0] + 256 * imgs[1]  # the probes: which source pixel landed where
        assert sorted(perm.tolist()) == list(range(784))  # a bijection of the 784 pixels
        assert np.array_equal(imgs, plain[:, perm])  # the same permutation on every image
        assert np.array_equal(t.test.images.numpy().reshape(-1, 784), arrays["test_images"].reshape(-1, 784)[:, perm])
        assert torch.equal(t.train.images, t2.train.images)  # identical in every run
        perms.append(perm)
    assert np.array_equal(perms[0], np.arange(784))  # task 1 is the plain images
    assert len({p.tobytes() for p in perms}) == 4


def test_rotated_angles_and_a_real_quarter_turn(mnist_root) -> None:
    from scipy import ndimage

    root, arrays = mnist_root
    s = build_scenario("rotated-mnist", "task", BenchmarkConfig(tasks=4), root)
    assert [t.name for t in s.tasks] == ["rot0", "rot45", "rot90", "rot135"]
    test = arrays["test_images"]
    assert np.array_equal(s.tasks[0].test.images.numpy()[:, 0], test)
    # 90 degrees counter-clockwise as displayed: exactly np.rot90 (the resample hits pixel centres).
    assert np.array_equal(s.tasks[2].test.images.numpy()[:, 0], np.rot90(test, 1, axes=(1, 2)))
    assert np.array_equal(s.tasks[2].train.images.numpy()[:, 0], np.rot90(arrays["train_images"], 1, axes=(1, 2)))
    # Hand-checked: the top-right pixel moves to the top-left corner.
    one = np.zeros((1, 1, 28, 28), np.uint8)
    one[0, 0, 0, 27] = 200
    turned = benchmarks.rotate_images(torch.from_numpy(one), 90).numpy()
    assert turned[0, 0, 0, 0] == 200 and turned.sum() == 200
    # 45 degrees: bilinear with zeros outside, as scipy's order-1 rotate (an independent implementation;
    # "grid-constant" pads with zeros beyond the edge; float rounding may differ by 1).
    ref = np.stack([ndimage.rotate(im.astype(np.float64), 45, reshape=False, order=1, mode="grid-constant", cval=0.0)
                    for im in test])
    got = s.tasks[1].test.images.numpy()[:, 0].astype(np.float64)
    assert np.abs(got - np.clip(np.rint(ref), 0, 255)).max() <= 1
    assert s.tasks[1].test.images.dtype == torch.uint8  # resampled once at load, stored as uint8
    assert benchmarks.rotation_angles(10) == [0, 18, 36, 54, 72, 90, 108, 126, 144, 162]


def test_streams_refuse_class_splits(mnist_root) -> None:
    root, _ = mnist_root
    with pytest.raises(ConfigError, match="--tasks"):
        build_scenario("rotated-mnist", "task", BenchmarkConfig(base=2), root)
    with pytest.raises(ConfigError, match="setting"):
        build_scenario("permuted-mnist", "class", BenchmarkConfig(), root)


# ---------------------------------------------------------------- per_class
def test_per_class_caps_train_stratified_seeded(mnist_root) -> None:
    root, arrays = mnist_root
    s = build_scenario("mnist", "class", BenchmarkConfig(per_class=4), root)
    train_labels = torch.cat([t.train.labels for t in s.tasks])
    assert torch.bincount(train_labels).tolist() == [4] * 10
    assert sum(len(t.test) for t in s.tasks) == 30  # the test split is never cut
    # Every kept image is one of its class's originals, no duplicates.
    for t in s.tasks:
        for c in range(2):
            pool = {im.tobytes() for im in arrays["train_images"][arrays["train_labels"] == t.classes[c]]}
            kept = [im.tobytes() for im in t.train.images.numpy()[t.train.labels.numpy() == t.offset + c, 0]]
            assert len(set(kept)) == 4 and set(kept) <= pool
    same = build_scenario("mnist", "class", BenchmarkConfig(per_class=4), root)
    other = build_scenario("mnist", "class", BenchmarkConfig(per_class=4, split_seed=1), root)
    assert torch.equal(s.tasks[0].train.images, same.tasks[0].train.images)
    assert not all(torch.equal(a.train.images, b.train.images) for a, b in zip(s.tasks, other.tasks))
    # Applied before the task split: every permuted task holds the same images.
    p = build_scenario("permuted-mnist", "task", BenchmarkConfig(tasks=2, per_class=2), root)
    assert torch.bincount(p.tasks[1].train.labels).tolist() == [2] * 10
    assert torch.equal(p.tasks[0].train.labels, p.tasks[1].train.labels)
    # Central: the embedded digits obey it too, and it comes through --set.
    d = build_scenario("digits", "task", BenchmarkConfig(per_class=5), None)
    assert all(torch.bincount(t.train.labels).tolist() == [5, 5] for t in d.tasks)
    assert resolve("finetune", "mnist", sets=["benchmark.per_class=7"]).benchmark_options.per_class == 7
    with pytest.raises(ConfigError, match="per_class"):
        build_scenario("mnist", "task", BenchmarkConfig(per_class=0), root)


# ---------------------------------------------------------------- where the files are looked for
def test_debian_fallback_without_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = write_mnist(tmp_path / "debian")
    monkeypatch.setattr(benchmarks, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    s = build_scenario("fashion-mnist", "task", BenchmarkConfig(tasks=1), None)
    assert np.array_equal(s.tasks[0].test.images.numpy()[:, 0], arrays["test_images"])
    assert benchmarks.BENCHMARKS["rotated-fashion-mnist"].locate(None)[0] == tmp_path / "debian"
    monkeypatch.setattr(benchmarks, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(DataError) as e:
        build_scenario("fashion-mnist", "task", BenchmarkConfig(), None)
    assert str(tmp_path / "nowhere") in str(e.value) and "apt-get install dataset-fashion-mnist" in str(e.value)
    with pytest.raises(DataError, match="--data-root"):
        build_scenario("mnist", "task", BenchmarkConfig(), None)


def test_layouts_and_missing_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tv = tmp_path / "tv"
    write_mnist(tv / "FashionMNIST" / "raw", gz=False)  # torchvision's layout, extracted
    write_mnist(tv / "mnist")
    assert benchmarks.find_idx(benchmarks.FASHION_MNIST, tv)[0] == tv / "FashionMNIST" / "raw"
    assert benchmarks.find_idx(benchmarks.MNIST, tv)[0] == tv / "mnist"
    assert len(build_scenario("fashion-mnist", "task", BenchmarkConfig(), tv).tasks) == 5
    partial = tmp_path / "partial"
    write_mnist(partial)
    (partial / f"{STEMS['test_labels']}.gz").unlink()
    err = _fails(capsys, ["run", "--method", "finetune", "--benchmark", "fashion-mnist", "--data-root", str(partial),
                          "--out", str(tmp_path / "r")], str(partial / "fashion-mnist"), str(partial / "FashionMNIST" / "raw"),
                 "missing t10k-labels-idx1-ubyte", "apt-get install dataset-fashion-mnist")
    assert f"{partial} (missing t10k-labels-idx1-ubyte)" in err


def test_list_says_where(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist(tmp_path / "d" / "mnist")
    monkeypatch.setattr(benchmarks, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    assert main(["list", "--data-root", str(tmp_path / "d")]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = {ln.split()[0]: (ln, lines[i + 1]) for i, ln in enumerate(lines[:-1]) if ln.startswith("  ") and ln.split()}
    assert "present" in row["mnist"][0] and str(tmp_path / "d" / "mnist") in row["mnist"][1]
    assert "missing" in row["fashion-mnist"][0] and str(tmp_path / "d" / "fashion-mnist") in row["fashion-mnist"][1]
    assert "missing" in row["cifar100"][0] and "needs --data-root" not in row["cifar100"][0]  # it was given
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "needs --data-root" in out and "fashion-mnist" in out


def test_list_into_a_closed_pipe_is_quiet() -> None:
    p = subprocess.Popen([sys.executable, "-m", "lifelong.cli", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before anything is written, as `lifelong list | head -0`
    err = p.stderr.read().decode()
    assert p.wait(60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


# ---------------------------------------------------------------- real Fashion-MNIST (Debian's copy)
@real_data
def test_real_fashion_mnist_counts() -> None:
    data = benchmarks.load_idx(benchmarks.FASHION_MNIST, None)
    assert data.train.images.shape == (60000, 1, 28, 28) and data.test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.train.labels).tolist() == [6000] * 10
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10


def _run(tmp_path: Path, capsys: pytest.CaptureFixture, name: str, *argv: str) -> dict:
    code = main(["run", "--benchmark", "fashion-mnist", "--set", "benchmark.per_class=200", "--epochs", "3", "--device", "cpu",
                 "--quiet", "--out", str(tmp_path / name), *argv])
    capsys.readouterr()
    assert code == 0
    return json.loads((tmp_path / name / "metrics.json").read_text())


@real_data
@pytest.mark.usefixtures("one_thread")
def test_real_fashion_mnist_finetune_forgets_independent_does_not(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ft = _run(tmp_path, capsys, "ft", "--method", "finetune", "--setting", "class", "--tasks", "2")
    first, last = ft["accuracy"][0][0], ft["accuracy"][-1][0]
    assert first > 0.7 and last < first - 0.5, ft["accuracy"]  # class-incremental finetune overwrites task 1
    ind = _run(tmp_path, capsys, "ind", "--method", "independent", "--setting", "task", "--tasks", "2")
    assert ind["accuracy"][0][0] > 0.7 and ind["accuracy"][-1][0] == ind["accuracy"][0][0], ind["accuracy"]
    assert ind["unforgetting_verified"] is True
