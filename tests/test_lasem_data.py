"""LASEM's data protocols (cifar100-lasem, stl10-lasem) on tiny files in the published formats."""

from __future__ import annotations

from pathlib import Path

import torch

import lifelong
from conftest import write_cifar100, write_stl10
from lifelong.data.lasem_data import CIFAR100_LASEM_TASKS, _stl_transform, stl10_design


def test_cifar100_lasem_fixed_task_lists_and_17_3_split(tmp_path: Path) -> None:
    root = write_cifar100(tmp_path / "c", per_class_train=30, per_class_test=2)
    s = lifelong.load_scenario("cifar100-lasem", data_root=root)
    assert len(s) == 10 and [t.classes for t in s.tasks] == CIFAR100_LASEM_TASKS
    t = s.tasks[3]
    assert (len(t.train), len(t.val), len(t.test)) == (170, 30, 20)  # 17 / 3 per class, every test image
    assert sorted(set(t.train.labels.tolist())) == list(range(10)) and t.mean is not None
    # train and validation images are disjoint (one shuffle, two pools)
    assert not set(map(bytes, t.train.images.reshape(170, -1).numpy())) & set(map(bytes, t.val.images.reshape(30, -1).numpy()))
    r = lifelong.run(method="hps", benchmark="cifar100-lasem", data_root=root, tasks=2, epochs=1, out=tmp_path / "r", device="cpu")
    assert r.method.spec.variant == "cifar4" and len(r.accuracy) == 2


def test_stl10_lasem_design_and_splits(tmp_path: Path) -> None:
    design = stl10_design(20, 1000)
    assert len({frozenset(c) for c, *_ in design}) == 20 and all(len(set(c)) == 3 for c, *_ in design)
    assert {m for _, m, _, _ in design} <= {-0.05, -0.025, 0.0, 0.025}
    assert all(sd in (0.0, 0.025) for _, _, sd, _ in design) and all(sorted(o) == [0, 1, 2] for *_, o in design)
    root = write_stl10(tmp_path / "s", n_train=400, n_test=20)  # 40 per class -> 10 kept: 2 val, 8 train
    s = lifelong.load_scenario("stl10-lasem", data_root=root, tasks=3)
    t = s.tasks[0]
    assert (len(t.train), len(t.val), len(t.test)) == (24, 6, 6) and t.classes == design[0][0]
    assert s.augment.mean == (0.5, 0.5, 0.5) and s.augment.std == (1.0, 1.0, 1.0)  # the code's x/255 - 0.5
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(_stl_transform(x, 0.0, 0.0, [2, 0, 1], g), x[:, [2, 0, 1]])  # no noise: a pure permutation
    shifted = _stl_transform(x, 0.025, 0.0, [0, 1, 2], g).int() - x.int()  # a constant shift of 0.025 * 255, clipped
    assert ((shifted == 6) | (shifted == 7) | (x.int() + shifted == 255)).all()


def test_lasem_presets_resolve() -> None:
    from lifelong.config import resolve

    files = sorted((Path(__file__).parent.parent / "configs").glob("lasem-*.yaml"))
    assert len(files) >= 7
    for f in files:
        cfg = resolve(config_file=f)
        assert cfg.backbone.name == "lasem_cnn" and cfg.hparams.optimizer == "rmsprop_tf" and cfg.hparams.batch_size == 10
        assert cfg.benchmark in ("cifar100-lasem", "stl10-lasem") and cfg.backbone.variant in ("cifar4", "stl6")
