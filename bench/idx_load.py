"""Loading the gzipped Fashion-MNIST IDX files: our checked reader against the bare minimum.

Baseline: ``gzip.decompress`` + ``np.frombuffer`` on the four files, no header parsing, no
checks, no copy (a read-only view). Ours: ``data.benchmarks.load_idx`` (find the folder,
gunzip, check magic, dims, sizes and counts, copy into writable memory, wrap as uint8
``ImageSet`` tensors). Both read Debian's copy (``apt-get install dataset-fashion-mnist``)
or ``--data-root``; the ratio says what the checks and the copy cost.

    python bench/idx_load.py [--data-root DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np

from common import best_of, machine
from lifelong.data import benchmarks
from lifelong.errors import DataError


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", help="folder with the four Fashion-MNIST files (default: Debian's copy)")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    root = Path(a.data_root) if a.data_root else None
    try:
        benchmarks.load_idx(benchmarks.FASHION_MNIST, root)  # warm-up; a missing file says where it looked
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    folder, _ = benchmarks.find_idx(benchmarks.FASHION_MNIST, root)
    files = [benchmarks.idx_file(folder, stem) for stem in benchmarks.IDX_NAMES]
    offsets = (16, 8, 16, 8)  # header bytes of images (3 dims) and labels (1 dim)

    def baseline() -> int:
        arrays = [np.frombuffer(gzip.decompress(p.read_bytes()), np.uint8, offset=o) for p, o in zip(files, offsets)]
        return (arrays[0].size + arrays[2].size) // 784

    def ours() -> int:
        data = benchmarks.load_idx(benchmarks.FASHION_MNIST, root)
        return len(data.train) + len(data.test)

    base, mine = best_of(baseline, a.repeats), best_of(ours, a.repeats)
    print(f"machine: {machine()}")
    print(f"Fashion-MNIST IDX (.gz) in {folder}: 70,000 images 28x28, best of {a.repeats}")
    print(f"gzip.decompress + np.frombuffer : {base:10.0f} images/s ({70000 / base:.3f} s)")
    print(f"lifelong load_idx (checked)     : {mine:10.0f} images/s ({70000 / mine:.3f} s)")
    print(f"ratio lifelong/baseline         : {mine / base:.2f}")


if __name__ == "__main__":
    main()
