"""LASEM's Office-Home protocols (officehome-lasem, officehome-incremental) on tiny fake Office-Home folders.

Every fake image is one flat colour that names it: red = class id in the code's 65-class list,
green = position in its class folder, blue = domain (0 Product, 255 Real World) for PNGs; JPEGs
use multiples of 32 (class slot) and 16 (position) so the lossy round trip still names them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lifelong
from lifelong.data.lasem_data import OFFICEHOME_CLASSES, OFFICEHOME_GROUPS, OFFICEHOME_INCREMENTAL
from lifelong.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def write_officehome(base: Path, domains: dict[str, str], classes: list[int], count, suffix: str = ".png") -> None:
    """``base/<folder>/<Class>/00001<suffix>...``; ``domains`` maps the domain to its folder name."""
    for d, (domain, folder) in enumerate(domains.items()):
        for c in classes:
            out = base / folder / OFFICEHOME_CLASSES[c]
            out.mkdir(parents=True)
            for i in range(count(c)):
                rgb = (c, i, 255 * d) if suffix == ".png" else (32 * OFFICEHOME_INCREMENTAL.index(c), 16 * i, 0)
                Image.fromarray(np.full((6, 8, 3), rgb, dtype=np.uint8)).save(out / f"{i + 1:05d}{suffix}")


def ids(view) -> list[tuple[int, int, int]]:
    """(red, green, blue) of each image's first pixel."""
    x = view.batch_images(torch.arange(len(view)))[:, :, 0, 0].long()
    return [tuple(r) for r in x.tolist()]


def test_officehome_lasem_layout_split_and_both_folder_spellings(tmp_path: Path) -> None:
    counts = lambda c: 10 if c % 2 else 17  # 10 -> 6/1/3; 17 -> 10/1/5 (int(10.2), int(1.7), int(5.1)), one unused
    archive = tmp_path / "a" / "OfficeHomeDataset_10072016"
    write_officehome(archive, {"Product": "Product", "RealWorld": "Real World"}, list(range(65)), counts)
    s = lifelong.load_scenario("officehome-lasem", data_root=tmp_path / "a", image_size=16)
    assert len(s) == 10 and s.augment.mean == (0.0, 0.0, 0.0) and s.augment.std == (1.0, 1.0, 1.0)  # pixels / 255
    for k, t in enumerate(s.tasks):
        domain, g = divmod(k, 5)  # tasks 0-4 Product x G0..G4, 5-9 Real World x G0..G4
        assert t.classes == OFFICEHOME_GROUPS[g] and t.class_names == [OFFICEHOME_CLASSES[c] for c in OFFICEHOME_GROUPS[g]]
        seen = []
        for split, frac in ((t.train, 0.6), (t.val, 0.1), (t.test, 0.3)):
            assert len(split) == sum(int(counts(c) * frac) for c in t.classes)
            for (red, green, blue), label in zip(ids(split), split.labels.tolist()):
                assert red == t.classes[label] and blue == 255 * domain  # label = position in the group, right domain
            seen.append({(r, gr) for r, gr, _ in ids(split)})
        assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
        assert sorted(t.train.labels.unique().tolist()) == list(range(13))
    # the code's ids, not Python's sorted order of the folder names (TV is 63, Table 58)
    assert OFFICEHOME_CLASSES[58] == "Table" and OFFICEHOME_CLASSES[63] == "TV" and OFFICEHOME_CLASSES[62] == "Trash_Can"
    # domain folders straight under --data-root, the code's "RealWorld" spelling: the same layout and split
    direct = tmp_path / "b"
    direct.mkdir()
    shutil.move(str(archive / "Product"), direct / "Product")
    shutil.move(str(archive / "Real World"), direct / "RealWorld")
    s2 = lifelong.load_scenario("officehome-lasem", data_root=direct, image_size=16, tasks=7)
    assert len(s2) == 7 and s2.tasks[6].classes == OFFICEHOME_GROUPS[1]
    assert all(ids(a.test) == ids(b.test) for a, b in zip(s.tasks, s2.tasks))
    other = lifelong.load_scenario("officehome-lasem", data_root=direct, image_size=16, tasks=1, split_seed=1)
    assert ids(other.tasks[0].train) != ids(s.tasks[0].train)  # the code's groups r = split_seed r
    with pytest.raises(DataError, match="domain Product not found"):  # the folders have moved away
        lifelong.load_scenario("officehome-lasem", data_root=tmp_path / "a", image_size=16)


def test_officehome_incremental_classes_split_once_and_no_leak(tmp_path: Path) -> None:
    write_officehome(tmp_path / "OfficeHomeDataset_10072016", {"Product": "Product"}, OFFICEHOME_INCREMENTAL,
                     lambda c: 7 + OFFICEHOME_INCREMENTAL.index(c), suffix=".jpg")  # 7..14 images per class
    s = lifelong.load_scenario("officehome-incremental", data_root=tmp_path)
    assert len(s) == 6 and s.augment.size == 128 and s.tasks[0].train.shape == (3, 128, 128)
    assert [t.classes for t in s.tasks] == [OFFICEHOME_INCREMENTAL[:3 + j] for j in range(6)]
    assert s.tasks[0].class_names == ["Couch", "Table", "Paper_Clip"]
    assert s.tasks[5].class_names[-1] == "Trash_Can"

    def named(view) -> list[tuple[int, int]]:  # (slot in the class list, position in the folder)
        return [(round(r / 32), round(g / 16)) for r, g, _ in ids(view)]

    trains, tests = set(), set()
    for t in s.tasks:
        n = [7 + slot for slot in range(len(t.classes))]
        assert (len(t.train), len(t.val), len(t.test)) == tuple(sum(int(k * f) for k in n) for f in (0.6, 0.1, 0.3))
        for split, store in ((t.train, trains), (t.test, tests)):
            got = named(split)
            assert [slot for slot, _ in got] == split.labels.tolist()  # label = position in the task's class list
            store |= set(got)
        # one split per class: this task's images of an old class are exactly the first task's
        first = set(named(s.tasks[0].train))
        assert {x for x in named(t.train) if x[0] < 3} == first
    assert not trains & tests  # no image in one task's train and another's test
    with pytest.raises(Exception, match="outside 1..6"):
        lifelong.load_scenario("officehome-incremental", data_root=tmp_path, tasks=7)


def test_officehome_incremental_runs_with_the_lasem_net_by_default(tmp_path: Path) -> None:
    write_officehome(tmp_path / "data", {"Product": "Product"}, OFFICEHOME_INCREMENTAL, lambda c: 10)
    r = lifelong.run(method="darts-hps", benchmark="officehome-incremental", data_root=tmp_path / "data", tasks=2, epochs=1,
                     out=tmp_path / "r", device="cpu", benchmark__image_size=16, backbone__variant="officehome4", backbone__width=0.125, batch_size=16)
    assert r.method.spec.variant == "officehome4" and len(r.accuracy) == 2  # lasem_cnn without --backbone
    assert [len(t["info"]["config"]) for t in r.metrics["tasks"]] == [4, 4]
