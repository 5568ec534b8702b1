"""One more task from the user's image folder, appended to a finished run's stream (``lifelong learn``).

The folder is ``DIR/<class>/*`` (a seeded ``test_fraction`` per class held out for testing, as the
``folder`` benchmark) or ``DIR/train/<class>/*`` with ``DIR/test`` (or ``DIR/val``). Its images are
decoded once into the uint8 cache (``images.load_folder``) at the size the run stores its images
and converted to the run's channels (grayscale by PIL's ``L`` formula, ITU-R 601-2 luma, in
integers); labels follow the run's setting (0..k-1 in the task setting, after every class seen in
the class setting). A run whose stored images are not square, or have neither 1 nor 3 channels,
cannot take a folder of photos: refused with one line.

A learned task is recorded as a small spec (name, folder, layout, class names and a digest of the
files' relative paths and sizes), from which ``learned_task`` rebuilds it identically when the run
is loaded again (``eval``, a second ``learn``); a folder that changed since is refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .images import scan_folder
from .imageset import ImageSet
from .scenario import Scenario, Task, channel_stats, stratified_split

# PIL's RGB -> L conversion, in integers: L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16
LUMA = (19595, 38470, 7471)


def run_image_shape(scenario: Scenario) -> tuple[int, int]:
    """(channels, side) of the images the run stores; refused when a photo folder cannot match them."""
    task = scenario.tasks[0]
    shape = tuple(task.train.shape if len(task.train) else task.test.shape)
    if len(shape) != 3:
        raise DataError(f"the run's {scenario.name} images have shape {shape}, not (channels, height, width)")
    c, h, w = shape
    if h != w:
        raise DataError(f"the run stores {h}x{w} images; image folders are decoded to square images, so a new task "
                        "cannot match them")
    if c not in (1, 3):
        raise DataError(f"the run's {scenario.name} images have {c} channels; image folders decode to RGB (3) or "
                        "grayscale (1), so a new task cannot match them")
    return c, h


def to_channels(images: Any, channels: int, chunk: int = 4096) -> torch.Tensor | np.ndarray:
    """(N, 3, H, W) uint8 RGB as the run stores its images: unchanged for 3 channels (a memmap stays
    one), grayscale (N, 1, H, W) by PIL's ``L`` formula for 1."""
    if channels == 3:
        return images
    out = torch.empty((len(images), 1, *images.shape[2:]), dtype=torch.uint8)
    r, g, b = LUMA
    for start in range(0, len(images), chunk):
        x = torch.as_tensor(np.asarray(images[start:start + chunk])).to(torch.int64)
        out[start:start + chunk, 0] = ((x[:, 0] * r + x[:, 1] * g + x[:, 2] * b + 32768) >> 16).to(torch.uint8)
    return out


def _layout(root: Path) -> tuple[str, list[Path]]:
    """``single`` (root/<class>) or ``split`` (root/train + root/test|val), and the class roots to scan."""
    if not root.is_dir():
        raise DataError(f"task folder {root} does not exist; expected {root}/<class>/<images> or "
                        f"{root}/train/<class>/<images> and {root}/test/<class>/<images>")
    train, test = root / "train", next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if train.is_dir() and test is not None:
        return "split", [train, test]
    if train.is_dir():
        raise DataError(f"task folder {root} has train/ but no test/ (or val/) beside it; add {root}/test/<class>/<images> "
                        f"or use {root}/<class>/<images> alone")
    if test is not None:
        raise DataError(f"task folder {root} has {test.name}/ but no train/ beside it; add {root}/train/<class>/<images> "
                        f"or use {root}/<class>/<images> alone")
    return "single", [root]


def _digest(roots: list[Path], base: Path) -> tuple[list[str], str]:
    """Class names and a digest of every image's relative path, class and byte size (not modification
    times: a copied folder is the same task)."""
    h = hashlib.sha256(b"taskfolder v1\n")
    classes: list[str] = []
    for r in roots:
        files, labels, classes_here = scan_folder(r)
        if classes and classes_here != classes:
            raise DataError(f"{roots[0]} and {r} have different class folders ({', '.join(classes)} vs "
                            f"{', '.join(classes_here)}); they must match")
        classes = classes_here
        for f, lab in zip(files, labels):
            h.update(f"{f.relative_to(base)}\t{lab}\t{f.stat().st_size}\n".encode())
    return classes, h.hexdigest()[:24]


def learned_task(folder: str | Path, name: str, scenario: Scenario, bcfg: Any, val_fraction: float,
                 expect: dict[str, Any] | None = None) -> tuple[Task, dict[str, Any]]:
    """Task ``len(scenario)`` from ``folder``, in the run's image format and label space, and its spec.

    ``expect``: the spec recorded when the task was learned; the folder must still hold the same files."""
    from .benchmarks import folder_splits  # benchmarks imports this module's neighbours only

    root = Path(folder).expanduser().resolve()
    layout, roots = _layout(root)
    classes, digest = _digest(roots, root)
    if expect is not None and (expect.get("digest") != digest or expect.get("classes") != classes):
        raise DataError(f"task folder {root} changed since task {name!r} was learned from it (its files or classes "
                        "differ); restore it to re-evaluate the run")
    if len(classes) < 2:
        raise DataError(f"task folder {root} has {len(classes)} class folder ({', '.join(classes)}); a task needs at least "
                        f"two: {root}/<class>/<images>")
    channels, side = run_image_shape(scenario)
    train, test = folder_splits(root, side, bcfg)
    short = [classes[c] for c in range(len(classes)) if not bool((test.labels == c).any())]
    if short:
        raise DataError(f"task folder {root}: class {short[0]!r} has no test image (the single-folder layout holds out "
                        f"{bcfg.test_fraction:g} of each class, so it needs at least 3 images); add images or give "
                        f"{root}/train and {root}/test")

    i = len(scenario.tasks)
    setting = scenario.setting
    offset = scenario.num_classes if setting == "class" else 0

    def prepare(s: Any) -> Any:
        images = s.images if isinstance(s, ImageSet) else s.batch_images(torch.arange(len(s)))
        labels = s.labels + offset
        if channels == 3 and isinstance(s, ImageSet):
            return ImageSet(images, labels, None, list(classes))
        return ImageSet(torch.as_tensor(to_channels(images, channels)).contiguous(), labels, None, list(classes))

    tr, te = prepare(train), prepare(test)
    val = tr.subset(torch.zeros(0, dtype=torch.long))
    if val_fraction > 0:
        keep, held = stratified_split(tr.labels, val_fraction, bcfg.split_seed + i)
        tr, val = tr.subset(keep), tr.subset(held)
    for s in (tr, val, te):
        s.class_names = list(classes)
    mean = std = None
    if any(t.mean is not None for t in scenario.tasks):  # the run normalises each task with its own statistics
        mean, std = channel_stats(tr)
    first = scenario.num_classes  # ids beyond every class of the stream (learned classes have no dataset id)
    task = Task(i, name, list(range(first, first + len(classes))), list(classes), tr, val, te, offset, mean, std)
    spec = {"name": name, "folder": str(root), "layout": layout, "classes": list(classes), "digest": digest}
    return task, spec


def check_name(name: str, scenario: Scenario) -> None:
    if not name or "/" in name or name.strip() != name:
        raise ConfigError(f"task name {name!r} must be non-empty, without '/' or surrounding spaces; pass --name NAME")
    taken = [t.name for t in scenario.tasks]
    if name in taken:
        raise ConfigError(f"the run already has a task named {name!r} (tasks: {', '.join(taken)}); pass --name NAME")
