"""Image folders and ``path label`` list files, decoded once into a cached uint8 array.

JPEG decoding dominates an epoch over a folder of photos, so we decode every
image once at a chosen size (shorter side resized, centre crop, square) into a
``.npy`` file and memory-map it afterwards. The cache key hashes the relative
paths, byte sizes and modification times of the source files plus the size, so
any change to the source makes a new cache entry (hashing every byte of an
ImageNet copy would cost as much as decoding it).
"""

from __future__ import annotations

import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .imageset import ImageSet

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"}


def default_cache_dir() -> Path:
    return Path(os.environ.get("LIFELONG_CACHE", Path.home() / ".cache" / "lifelong"))


_PROGRESS: bool | None = None  # None: a bar when stderr is a terminal; True: always; False: never (--quiet)
_DRY = False


def show_progress(flag: bool | None) -> None:
    """Whether the first decode of a folder or list shows a progress bar (``lifelong run --quiet``: never)."""
    global _PROGRESS
    _PROGRESS = flag


@contextmanager
def no_decoding() -> Iterator[None]:
    """Inside: ``decode_cached`` decodes nothing and writes no cache entry, returning all-zero images of
    the right shape (``lifelong run --dry-run``: the task layout needs only the files and labels)."""
    global _DRY
    old, _DRY = _DRY, True
    try:
        yield
    finally:
        _DRY = old


def scan_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """``root/<class>/<image>``: files, labels (sorted class-name order, as ImageFolder) and class names."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; expected {root}/<class>/<image files>")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = [f for f in sorted((root / name).rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
        if not found:  # it would count as a class that no image can ever be
            raise DataError(f"class folder {root / name} holds no images (suffixes {', '.join(sorted(IMAGE_SUFFIXES))}); "
                            "add images or remove the folder")
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataError(f"no images found under {root}; expected {root}/<class>/<image files> "
                        f"with suffixes {', '.join(sorted(IMAGE_SUFFIXES))}")
    return files, labels, classes


def read_list_file(list_file: Path, image_root: Path) -> tuple[list[Path], list[int]]:
    """A ``relative/path label`` list (BiC's ImageNet lists); paths relative to ``image_root``."""
    if not Path(list_file).is_file():
        raise DataError(f"list file {list_file} not found; expected lines of '<relative/path> <label>'")
    files, labels = [], []
    for n, line in enumerate(Path(list_file).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
            raise DataError(f"{list_file}:{n}: expected '<relative/path> <label>' with a label >= 0, got {line.strip()!r}")
        files.append(Path(image_root) / parts[0])
        labels.append(int(parts[1]))
    if not files:
        raise DataError(f"list file {list_file} has no entries")
    return files, labels


def fit_image(im: Image.Image, size: int) -> np.ndarray:
    """One image as the cache stores it: RGB, shorter side resized to ``size`` (bilinear), centre
    crop ``size`` x ``size``, (3, size, size) uint8. ``serve.predict`` prepares new images the same way."""
    im = im.convert("RGB")
    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def _decode(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return fit_image(im, size)
    except FileNotFoundError:
        raise DataError(f"image {path} not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from None


def _cache_key(files: list[Path], size: int) -> str:
    h = hashlib.sha256(f"v1 size={size}\n".encode())
    for f in files:
        try:
            st = f.stat()
        except FileNotFoundError:
            raise DataError(f"image {f} not found") from None
        h.update(f"{f}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def decode_cached(files: list[Path], size: int, cache_dir: Path | None = None, workers: int = 8) -> np.ndarray:
    """All ``files`` as one (N, 3, size, size) uint8 array, memory-mapped from the cache; the first
    decode shows a progress bar on a terminal (``show_progress``). Under torchrun rank 0 decodes and
    the other ranks then read its cache entry, instead of every rank decoding the same files."""
    from ..engine.distributed import rank_zero_first

    with rank_zero_first():
        return _decode_cached(files, size, cache_dir, workers)


def _decode_cached(files: list[Path], size: int, cache_dir: Path | None, workers: int) -> np.ndarray:
    cache_dir = Path(cache_dir or default_cache_dir())
    path = cache_dir / f"images-{_cache_key(files, size)}.npy"
    if _DRY:
        return np.broadcast_to(np.zeros((1, 3, size, size), dtype=np.uint8), (len(files), 3, size, size))
    if path.is_file():
        try:
            arr = np.load(path, mmap_mode="r")
            if arr.shape == (len(files), 3, size, size) and arr.dtype == np.uint8:
                return arr
        except (ValueError, OSError):
            pass  # a damaged cache entry is rebuilt below
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    bar = _decode_bar(len(files), size, path)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL releases the GIL while decoding
        for i, img in enumerate(pool.map(lambda f: _decode(f, size), files)):
            out[i] = img
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, out)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache entry
    return np.load(path, mmap_mode="r")


def _decode_bar(n: int, size: int, path: Path):
    """tqdm on stderr for the one-time decode (70,000 PNGs take about 26 s), or None."""
    if _PROGRESS is False or (_PROGRESS is None and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=n, desc=f"decoding images once at {size}x{size} into {path.parent}", unit="img",
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


def load_folder(root: Path, size: int, cache_dir: Path | None = None) -> ImageSet:
    files, labels, classes = scan_folder(root)
    images = decode_cached(files, size, cache_dir)
    return ImageSet(images, torch.as_tensor(labels, dtype=torch.long), class_names=classes)


def load_list(list_file: Path, image_root: Path, size: int, class_names: list[str] | None = None,
              cache_dir: Path | None = None) -> ImageSet:
    files, labels = read_list_file(list_file, image_root)
    images = decode_cached(files, size, cache_dir)
    n = max(labels) + 1
    names = class_names or [str(i) for i in range(n)]
    if len(names) < n:
        raise DataError(f"{list_file} has label {n - 1} but only {len(names)} class names")
    return ImageSet(images, torch.as_tensor(labels, dtype=torch.long), class_names=names)
