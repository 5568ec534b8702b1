"""Presets build the exact task splits, label spaces and class orders their protocols define."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import write_image_folder
from lifelong.data.benchmarks import BenchmarkConfig, build_scenario
from lifelong.data.scenario import class_groups, legacy_permutation, stratified_split
from lifelong.errors import ConfigError, DataError

SEED_1993_CIFAR = [68, 56, 78, 8, 23, 84, 90, 65, 74, 76, 40, 89, 3, 92, 55, 9, 26, 80, 43, 38]


def test_seed_1993_class_order() -> None:
    order = legacy_permutation(100, 1993)
    assert order[:20] == SEED_1993_CIFAR
    assert order[50:53] == [37, 95, 14] and order[-1] == 33
    assert sorted(order) == list(range(100))


def test_class_groups() -> None:
    order = list(range(100))
    g = class_groups(order, "class", None, 50, 10)
    assert [len(x) for x in g] == [50] + [10] * 5 and g[1] == list(range(50, 60))
    assert [len(x) for x in class_groups(order, "class", None, 10, 10)] == [10] * 10
    assert [len(x) for x in class_groups(order, "task", 20, None, None)] == [5] * 20
    with pytest.raises(ConfigError, match="multiple"):
        class_groups(order, "class", None, 50, 7)
    with pytest.raises(ConfigError, match="divide"):
        class_groups(order, "task", 7, None, None)


def test_stratified_split_sizes_and_disjointness() -> None:
    labels = torch.tensor([0] * 10 + [1] * 20 + [2] * 5)
    keep, held = stratified_split(labels, 0.2, seed=3)
    assert sorted(labels[held].tolist()) == [0, 0, 1, 1, 1, 1, 2]
    assert len(set(keep.tolist()) & set(held.tolist())) == 0 and len(keep) + len(held) == 35
    keep2, held2 = stratified_split(labels, 0.2, seed=3)
    assert torch.equal(held, held2)


def test_digits_task_setting() -> None:
    s = build_scenario("digits", "task", BenchmarkConfig(), None)
    assert len(s) == 5 and s.setting == "task"
    assert [t.classes for t in s.tasks] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    total = sum(len(t.train) + len(t.test) for t in s.tasks)
    assert total == 1797
    for t in s.tasks:
        assert set(t.train.labels.tolist()) == {0, 1} and set(t.test.labels.tolist()) == {0, 1}
    # the test split is fixed: the same images whatever the run seed
    again = build_scenario("digits", "task", BenchmarkConfig(), None)
    assert torch.equal(again.tasks[2].test.images, s.tasks[2].test.images)


def test_digits_class_setting_default_b2_inc2_and_val_split() -> None:
    s = build_scenario("digits", "class", BenchmarkConfig(val_fraction=0.1), None)
    assert [t.offset for t in s.tasks] == [0, 2, 4, 6, 8]
    assert set(s.tasks[3].train.labels.tolist()) == {6, 7}
    v = s.tasks[0].val
    assert len(v) > 0 and set(v.labels.tolist()) == {0, 1}
    assert not set(map(bytes, v.images.numpy())) & set(map(bytes, s.tasks[0].train.images.numpy()))


def test_permuted_digits() -> None:
    s = build_scenario("permuted-digits", "task", BenchmarkConfig(tasks=3), None)
    assert len(s) == 3 and all(t.num_classes == 10 for t in s.tasks)
    a, b = s.tasks[0].test.images.reshape(-1, 64), s.tasks[1].test.images.reshape(-1, 64)
    assert not torch.equal(a, b)
    assert torch.equal(a.sort(1).values, b.sort(1).values)  # same pixels, permuted
    with pytest.raises(ConfigError):
        build_scenario("permuted-digits", "class", BenchmarkConfig(), None)


def test_cifar100_superclass20_follows_cpg_protocol(cifar_root: Path) -> None:
    s = build_scenario("cifar100-superclass20", "task", BenchmarkConfig(), cifar_root)
    assert len(s) == 20 and [t.name for t in s.tasks] == [f"coarse{c:02d}" for c in range(20)]
    from lifelong.data.formats import load_cifar100

    raw = load_cifar100(cifar_root)
    for t in s.tasks:
        assert t.class_names == sorted(t.class_names) and len(t.classes) == 5
        coarse = {int(raw.train_coarse[raw.train.labels == c][0]) for c in t.classes}
        assert coarse == {t.id}
        assert sorted(t.train.labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
        # label j in the task is its j-th class: the encoded fine id matches
        assert torch.equal(torch.tensor(t.classes)[t.train.labels], t.train.images[:, 0, 0, 0].long())
        assert t.mean is not None and len(t.mean) == 3  # per-task normalisation (cpg.md 2.1)


def test_cifar100_class_setting_b50_steps_of_10(cifar_root: Path) -> None:
    s = build_scenario("cifar100", "class", BenchmarkConfig(), cifar_root)
    assert [t.num_classes for t in s.tasks] == [50, 10, 10, 10, 10, 10]
    assert s.class_order[:20] == SEED_1993_CIFAR
    t1 = s.tasks[1]
    assert t1.offset == 50 and sorted(set(t1.train.labels.tolist())) == list(range(50, 60))
    # label = position in the class order
    order = torch.tensor(s.class_order)
    assert torch.equal(order[t1.train.labels], t1.train.images[:, 0, 0, 0].long())
    b0 = build_scenario("cifar100", "class", BenchmarkConfig(base=10, increment=10), cifar_root)
    assert len(b0) == 10
    custom = build_scenario("cifar100", "class", BenchmarkConfig(class_order=list(range(100)), increment=25, base=25), cifar_root)
    assert custom.tasks[0].classes == list(range(25))
    task = build_scenario("cifar100", "task", BenchmarkConfig(), cifar_root)
    assert len(task) == 10 and set(task.tasks[4].train.labels.tolist()) == set(range(10))


def test_stl10_preset(stl_root: Path) -> None:
    s = build_scenario("stl10", "task", BenchmarkConfig(), stl_root)
    assert len(s) == 5 and s.tasks[0].class_names == ["airplane", "bird"] and s.augment.size == 96


def test_folder_preset_with_and_without_split_folders(tmp_path: Path) -> None:
    flat = write_image_folder(tmp_path / "flat", [f"c{i}" for i in range(4)], per_class=8)
    s = build_scenario("folder", "class", BenchmarkConfig(base=2, increment=1, image_size=16), flat)
    assert [t.num_classes for t in s.tasks] == [2, 1, 1]
    assert sum(len(t.test) for t in s.tasks) == 8  # 25% of each class held out
    split = tmp_path / "split"
    write_image_folder(split / "train", ["x", "y"], per_class=3)
    write_image_folder(split / "test", ["x", "y"], per_class=2)
    s2 = build_scenario("folder", "task", BenchmarkConfig(tasks=2, image_size=16), split)
    assert [len(t.train) for t in s2.tasks] == [3, 3] and [len(t.test) for t in s2.tasks] == [2, 2]


def test_missing_data_root_and_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--data-root"):
        build_scenario("cifar100", "class", BenchmarkConfig(), None)
    with pytest.raises(DataError, match=r"cifar-100-python[/\\]train"):
        build_scenario("cifar100", "class", BenchmarkConfig(), tmp_path)
    with pytest.raises(ConfigError, match="did you mean cifar100"):
        build_scenario("cifar10", None, BenchmarkConfig(), tmp_path)
