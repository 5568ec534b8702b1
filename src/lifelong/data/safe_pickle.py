"""A restricted unpickler for dataset files (CIFAR-100 python pickles).

Pickles can run arbitrary code on load, and dataset archives come from anywhere,
so we never call ``pickle.load``. ``find_class`` allows exactly what NumPy needs to
rebuild arrays (under both the ``numpy.core`` and NumPy 2's ``numpy._core`` names)
and refuses everything else before it is imported, so nothing in the file runs.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from ..errors import DataError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # protocol-2 pickles of bytes written by Python 3
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def load_pickle(path: Path) -> Any:
    """Load ``path`` with only plain containers and NumPy arrays allowed.

    Python 2 pickles (the published CIFAR files) have ``str`` keys that are bytes;
    ``encoding="bytes"`` keeps them as ``bytes`` and callers accept both spellings.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path} is not a safe dataset pickle ({exc}); re-download the official archive") from None
    except Exception as exc:  # truncated or garbage files raise many kinds
        raise DataError(f"{path} is not a readable pickle ({type(exc).__name__}: {exc}); re-download the official archive") from None
