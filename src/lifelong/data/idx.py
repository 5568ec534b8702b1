"""Reader of the IDX format of MNIST, Fashion-MNIST, KMNIST and EMNIST.

The format (LeCun, Cortes & Burges, "THE MNIST DATABASE", yann.lecun.com/exdb/mnist/):
a big-endian header ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian uint32 sizes,
then the values in row-major order. Only type 0x08 (unsigned byte) is used by these
datasets: images are magic 0x00000803 (N x rows x cols), labels 0x00000801 (N). Files
may be gzipped (as published) or not; which one is decided by the gzip magic bytes,
not by the file name, since both spellings circulate with either content.

Every defect (foreign file, other type code, truncated or over-long data, image and
label counts that disagree) is a ``DataError`` naming the file and what is wrong.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
IMAGES_MAGIC = 0x00000803  # type 0x08 (uint8), 3 dimensions
LABELS_MAGIC = 0x00000801  # type 0x08 (uint8), 1 dimension
_TYPE_NAMES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "short", 0x0C: "int", 0x0D: "float", 0x0E: "double"}


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path} is a damaged or truncated gzip file ({exc}); re-download it") from None


def parse_idx(data: bytes, path: Path, magic: int) -> np.ndarray:
    """The uint8 array of an IDX file's bytes, checked against the expected ``magic``."""
    what = "images" if magic == IMAGES_MAGIC else "labels"
    if len(data) < 4:
        raise DataError(f"{path} is {len(data)} bytes long, too short for an IDX header; re-download it")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        code, ndim = data[2], data[3]
        if data[:2] == b"\x00\x00" and code in _TYPE_NAMES:
            detail = f"type {code:#04x} ({_TYPE_NAMES[code]}) with {ndim} dimension(s)"
        else:
            detail = "not an IDX header"
        raise DataError(f"{path} has magic number {got:#010x} ({detail}), expected {magic:#010x} "
                        f"(IDX {what}: unsigned bytes, {magic & 0xFF} dimension(s)); is it the right file?")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated inside its header ({len(data)} of {header} bytes); re-download it")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    body = len(data) - header
    if body != expected:
        state = "truncated" if body < expected else "longer than its header says"
        raise DataError(f"{path} is {state}: header {'x'.join(map(str, dims))} needs {expected} data bytes, "
                        f"the file has {body}; re-download it")
    # One copy out of the immutable buffer: torch needs writable memory.
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims).copy()


def read_images(path: Path) -> np.ndarray:
    """(N, rows, cols) uint8 from an ``*-images-idx3-ubyte[.gz]`` file."""
    return parse_idx(read_bytes(path), Path(path), IMAGES_MAGIC)


def read_labels(path: Path) -> np.ndarray:
    """(N,) uint8 from an ``*-labels-idx1-ubyte[.gz]`` file."""
    return parse_idx(read_bytes(path), Path(path), LABELS_MAGIC)


def read_pair(images_path: Path, labels_path: Path, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images and int64 labels of one split; counts must agree and labels fit ``num_classes``."""
    images = read_images(images_path)
    labels = read_labels(labels_path)
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
                        "the two files must come from the same split")
    if num_classes is not None and len(labels) and int(labels.max()) >= num_classes:
        raise DataError(f"{labels_path} has label {int(labels.max())}, outside the dataset's {num_classes} classes")
    return images, labels.astype(np.int64)
