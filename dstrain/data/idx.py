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
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

from dstrain.errors import ConfigError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}
# IDX type codes -> big-endian numpy dtypes (the format's own table)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path | str) -> np.ndarray:
    """The array stored in one IDX file (``.gz`` or plain); ConfigError names a broken file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise ConfigError(str(path), f"cannot be read ({err})", "re-install the data set") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ConfigError(str(path), "is not an IDX file (bad magic number)",
                          "point task.data_dir at the folder holding the original IDX files")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", count=ndim, offset=4)) if len(data) >= header else ()
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
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
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ConfigError(str(paths[f"{split}_images"]),
                              f"holds {images.shape} images for {labels.shape} labels",
                              "images must be (N, H, W) with one label each: re-install the data set")
    train_x = torch.from_numpy(arrays["train_images"].astype(np.float32) / 255.0)
    mean, std = float(train_x.mean()), float(train_x.std())

    def split(key: str) -> TensorDataset:
        x = torch.from_numpy(arrays[f"{key}_images"].astype(np.float32) / 255.0)
        y = torch.from_numpy(arrays[f"{key}_labels"].astype(np.int64))
        return TensorDataset(((x - mean) / max(std, 1e-6)).unsqueeze(1), y)

    return split("train"), split("test")
