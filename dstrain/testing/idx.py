"""IDX files written from arrays, and a tiny learnable Fashion-MNIST-shaped folder of them.

Why: tests and recipe smoke runs exercise the real IDX loading path (:mod:`dstrain.data.idx`)
without the 31 MB data set.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from dstrain.data.idx import _IDX_DTYPES


def write_idx(path: Path | str, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed when the name ends in .gz).

    For tests and small stand-in data sets: the inverse of :func:`read_idx`.
    """
    path = Path(path)
    array = np.asarray(array)
    code = next((c for c, d in _IDX_DTYPES.items() if np.dtype(d).kind == array.dtype.kind
                 and np.dtype(d).itemsize == array.dtype.itemsize), None)
    if code is None:
        raise ValueError(f"dtype {array.dtype} has no IDX type code")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + array.astype(_IDX_DTYPES[code]).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:
        f.write(data)
    return path


def write_fashion_stand_in(folder: Path | str, n_train: int = 256, n_test: int = 64, size: int = 28,
                           gz: bool = True, seed: int = 0) -> Path:
    """A tiny learnable Fashion-MNIST-shaped folder (class = which horizontal band is bright).

    Lets tests and recipe smoke runs exercise the real IDX loading path without the 31 MB data.
    """
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
        band = max(size // 10, 1)
        for i, y in enumerate(labels):
            images[i, y * band:(y + 1) * band] = 255
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return folder
