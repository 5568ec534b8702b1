"""Image sets: memory-mapped data is selected and joined lazily, never copied into RAM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from conftest import write_image_folder
from lifelong.data.benchmarks import BenchmarkConfig, build_scenario
from lifelong.data.imageset import ImageSet, RowView


def test_row_views_read_memory_mapped_sets_lazily(tmp_path: Path) -> None:
    arr = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=(10, 1, 2, 2))
    arr[:] = np.arange(10, dtype=np.uint8)[:, None, None, None]
    mapped = ImageSet(arr, torch.arange(10) % 3)
    mem = ImageSet(torch.full((3, 1, 2, 2), 200, dtype=torch.uint8), torch.tensor([7, 7, 8]))
    rows = mapped.subset(torch.tensor([9, 2, 5]))
    assert isinstance(rows, RowView) and rows.labels.tolist() == [0, 2, 2]
    both = ImageSet.concat([rows, mem])
    assert isinstance(both, RowView) and len(both) == 6 and both.labels.tolist() == [0, 2, 2, 7, 7, 8]
    assert both.batch_images(torch.tensor([3, 0, 2]))[:, 0, 0, 0].tolist() == [200, 9, 5]
    assert both.subset(torch.tensor([1])).batch_images(torch.tensor([0]))[0, 0, 0, 0] == 2
    assert torch.equal(both.materialize().images[:, 0, 0, 0], torch.tensor([9, 2, 5, 200, 200, 200], dtype=torch.uint8))
    plain = ImageSet.concat([mem, mem])  # in-memory parts: an ordinary, copied ImageSet
    assert isinstance(plain, ImageSet) and len(plain) == 6
    tagged = ImageSet.concat([rows.with_tasks(0), mem.with_tasks(1)])
    assert tagged.tasks.tolist() == [0, 0, 0, 1, 1, 1]


def test_folder_tasks_stay_on_disk(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "f", ["a", "b", "c", "d"], per_class=4)
    s = build_scenario("folder", "task", BenchmarkConfig(tasks=2, image_size=16, val_fraction=0.25), root)
    for t in s.tasks:
        assert isinstance(t.train, RowView) and isinstance(t.test, RowView) and isinstance(t.val, RowView)
        assert t.train.batch_images(torch.arange(len(t.train))).shape == (len(t.train), 3, 16, 16)
    assert sorted(s.tasks[1].train.labels.tolist() + s.tasks[1].val.labels.tolist()) == [0] * 3 + [1] * 3
