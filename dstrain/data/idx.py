"""IDX files (the MNIST / Fashion-MNIST format) and the Fashion-MNIST train/test split.

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, Zalando) is real data that no one in this
project made: 60,000 training and 10,000 test 28x28 grey-scale images of 10 clothing
classes.  Debian ships the four original files (``apt-get install dataset-fashion-mnist``
puts them in ``/usr/share/datasets/fashion-mnist/``), so nothing is downloaded at run time.

An IDX file is a big-endian header -- two zero bytes, a type code, the number of
dimensions, then one 4-byte size per dimension -- followed by the raw array.  The files are
read gzip-compressed (as shipped) or plain (as some mirrors unpack them).
"""
from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

from dstrain.errors import ConfigError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = 10
REINSTALL = "the file is corrupt or not Fashion-MNIST's: re-install the data set"
# IDX type codes -> big-endian numpy dtypes (the format's own table)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path | str) -> np.ndarray:
    """The array stored in one IDX file (``.gz`` or plain); ConfigError names a broken file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    # gzip.BadGzipFile is an OSError; damaged deflate data inside a valid gzip header is a zlib.error
    except (OSError, EOFError, zlib.error) as err:
        raise ConfigError(str(path), f"cannot be read ({err})", "re-install the data set") from None
    if not data:
        raise ConfigError(str(path), "is empty (0 bytes" + (" after decompression)" if opener is gzip.open else ")"),
                          "the download or copy was cut short: re-install the data set")
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ConfigError(str(path), "is not an IDX file (bad magic number)",
                          "point task.data_dir at the folder holding the original IDX files")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", count=ndim, offset=4)) if len(data) >= header else ()
    # math.prod on Python ints: a corrupt header's sizes must not wrap around in int64
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) < header or len(data) != expected:
        raise ConfigError(str(path), f"has {len(data)} bytes, its header says {expected}",
                          "the file is truncated or corrupt: re-install the data set")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str) -> Optional[Path]:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def load_fashion_mnist(data_dir: Optional[str] = None) -> Tuple[TensorDataset, TensorDataset]:
    """(train, test) as float tensors (N, 1, 28, 28), standardised with the training set's mean/std.

    No augmentation: the replication compares training losses, and a fixed training set keeps
    "final train loss" a property of the optimisation alone (this project's choice).
    """
    folder = Path(data_dir or FASHION_MNIST_DIR)
    paths = {key: _find(folder, stem) for key, stem in FASHION_MNIST_FILES.items()}
    missing = [FASHION_MNIST_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        fix = ("run `apt-get install dataset-fashion-mnist`" if data_dir is None or folder == Path(FASHION_MNIST_DIR)
               else f"set task.data_dir to the folder holding them (default {FASHION_MNIST_DIR}: "
                    "`apt-get install dataset-fashion-mnist`)")
        raise ConfigError("task.data_dir", f"{folder} has no {missing[0]}[.gz]", fix)
    arrays = {key: read_idx(p) for key, p in paths.items()}
    pixels = {split: _check_split(arrays, paths, split) for split in ("train", "test")}
    train_hw, test_hw = pixels["train"].shape[1:], pixels["test"].shape[1:]
    if train_hw != test_hw:
        raise ConfigError(str(paths["test_images"]), f"holds {test_hw[0]}x{test_hw[1]} images, the training "
                          f"images ({paths['train_images']}) are {train_hw[0]}x{train_hw[1]}",
                          "both splits must come from the same data set: re-install it")
    train_x = torch.from_numpy(pixels["train"])
    mean, std = float(train_x.mean()), float(train_x.std())
    if not (math.isfinite(mean) and math.isfinite(std)):
        # every value is finite in float32, but their sum or square is not: standardising gives NaN
        raise ConfigError(str(paths["train_images"]), f"has values too large to standardise (mean {mean}, "
                          f"std {std})", REINSTALL)

    def split(key: str) -> TensorDataset:
        x = torch.from_numpy(pixels[key])
        y = torch.from_numpy(arrays[f"{key}_labels"].astype(np.int64))
        return TensorDataset(((x - mean) / max(std, 1e-6)).unsqueeze(1), y)

    return split("train"), split("test")


def _check_split(arrays: Dict[str, np.ndarray], paths: Dict[str, Path], split: str,
                 num_classes: int = FASHION_MNIST_CLASSES) -> np.ndarray:
    """One split's images as float32 (N, H, W) scaled by 1/255, after checking what would otherwise fail late.

    Why here: an out-of-range label is an IndexError in the loss (for the test split only
    after a whole epoch of training), and one NaN pixel makes every standardised input NaN
    while the run still exits 0.  Both are one line naming the file at load time instead.
    """
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    image_path, label_path = paths[f"{split}_images"], paths[f"{split}_labels"]
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ConfigError(str(image_path), f"holds {images.shape} images for {labels.shape} labels",
                          "images must be (N, H, W) with one label each: re-install the data set")
    if images.size == 0:
        raise ConfigError(str(image_path), f"holds no pixels (shape {images.shape})", REINSTALL)
    if labels.dtype.kind not in "iu":
        raise ConfigError(str(label_path), f"holds {labels.dtype} labels; class labels are integers "
                          f"0..{num_classes - 1}", REINSTALL)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        more = f"; {len(bad)} bad labels in all" if len(bad) > 1 else ""
        raise ConfigError(str(label_path), f"label {labels[bad[0]]} at index {bad[0]} is outside the valid range "
                          f"0..{num_classes - 1} ({num_classes} classes{more})", REINSTALL)
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, reported just below
        pixels = images.astype(np.float32) / 255.0
    if images.dtype.kind == "f":  # integer types are always finite, and fit float32
        finite = np.isfinite(pixels)
        if not finite.all():
            n, row, col = np.unravel_index(int(np.argmin(finite)), finite.shape)
            value = images[n, row, col]
            what = f"{value}" if not np.isfinite(value) else f"{value} (infinite in float32)"
            count = int(finite.size - finite.sum())
            more = f" ({count} non-finite pixels in all)" if count > 1 else ""
            raise ConfigError(str(image_path), f"image {n} has a non-finite pixel {what} at row {row}, "
                              f"column {col}{more}", REINSTALL)
    return pixels
