"""Fashion-MNIST: the IDX reader on files the test writes (gz and plain), the one-line errors for a
missing or broken data folder, the fashion_mnist task, and SmallResNet's stem stride."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from dstrain import ConfigError
from dstrain.data import idx
from dstrain.data.idx import load_fashion_mnist, read_idx
from dstrain.models import SmallResNet
from dstrain.tasks import build_task
from dstrain.testing.idx import write_fashion_stand_in, write_idx


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_reads_back_what_the_format_says(tmp_path, suffix):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / f"img{suffix}", images)
    raw = gzip.decompress(path.read_bytes()) if suffix else path.read_bytes()
    # the header written by hand: magic 0x00000803 (ubyte, 3 dims), then big-endian sizes
    assert raw[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4])
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4) and (out == images).all()
    big = np.array([[1, -2], [70000, 5]], dtype=np.int32)  # multi-byte type: byte order must be right
    assert (read_idx(write_idx(tmp_path / f"i32{suffix}", big)) == big).all()


@pytest.mark.parametrize("gz", [True, False])
def test_load_fashion_mnist_from_a_written_folder(tmp_path, gz):
    folder = write_fashion_stand_in(tmp_path / "fm", n_train=40, n_test=12, gz=gz)
    labels = read_idx(next(folder.glob("train-labels*")))
    train, test = load_fashion_mnist(str(folder))
    x, y = train.tensors
    assert x.shape == (40, 1, 28, 28) and x.dtype == torch.float32 and test.tensors[0].shape == (12, 1, 28, 28)
    assert y.tolist() == labels.tolist() and y.dtype == torch.int64
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-3  # standardised on train
    raw = read_idx(next(folder.glob("train-images*"))).astype(np.float32) / 255
    expected = (raw - raw.mean()) / raw.std()
    assert np.allclose(x[:, 0].numpy(), expected, atol=1e-4)


def test_missing_default_folder_names_the_apt_package(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(ConfigError) as err:
        load_fashion_mnist()
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("task.data_dir:") and "train-images-idx3-ubyte" in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_missing_file_in_a_given_folder_names_the_field(tmp_path):
    folder = write_fashion_stand_in(tmp_path / "fm", n_train=8, n_test=8)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError, match=r"^task\.data_dir: .*has no t10k-labels-idx1-ubyte\[\.gz\] — set task\.data_dir"):
        load_fashion_mnist(str(folder))


def test_broken_files_fail_with_one_line(tmp_path):
    folder = write_fashion_stand_in(tmp_path / "fm", n_train=8, n_test=8, gz=False)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ConfigError, match="header says"):
        load_fashion_mnist(str(folder))
    path.write_bytes(b"\x12\x34\x08\x03" + bytes(12))
    with pytest.raises(ConfigError, match="not an IDX file"):
        read_idx(path)
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ConfigError, match="cannot be read"):
        read_idx(tmp_path / "bad.gz")
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))  # 8 images, 3 labels
    path.unlink()
    write_idx(folder / "train-images-idx3-ubyte", np.zeros((8, 28, 28), np.uint8))
    with pytest.raises(ConfigError, match="images for"):
        load_fashion_mnist(str(folder))


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("split,labels,words", [
    # label 11 of 10 classes in the test split: the loss's IndexError would come after a whole epoch
    ("t10k", np.array([1, 2, 11, 3, 4, 5, 6, 12], np.uint8),
     "label 11 at index 2 is outside the valid range 0..9 (10 classes; 2 bad labels in all)"),
    ("train", np.array([1] * 5 + [-1] + [0] * 10, np.int8),
     "label -1 at index 5 is outside the valid range 0..9 (10 classes)"),
    ("train", np.zeros(16, np.float32), "holds float32 labels; class labels are integers 0..9"),
])
def test_bad_labels_are_named_with_their_index_at_load(tmp_path, split, labels, words):
    folder = write_fashion_stand_in(tmp_path / "fm", n_train=16, n_test=8, gz=False)
    path = write_idx(folder / f"{split}-labels-idx1-ubyte", labels)
    task = build_task({"name": "fashion_mnist", "data_dir": str(folder)})
    with pytest.raises(ConfigError) as err:
        task.build_datasets()  # the trainer's first data step
    assert _one_line(err).startswith(f"{path}: {words} — ")


@pytest.mark.parametrize("split,dtype,value,words", [
    ("train", np.float32, np.nan, "image 3 has a non-finite pixel nan at row 4, column 5"),
    ("t10k", np.float32, -np.inf, "image 3 has a non-finite pixel -inf at row 4, column 5"),
    ("t10k", np.float64, 1e300, "image 3 has a non-finite pixel 1e+300 (infinite in float32) at row 4, column 5"),
])
def test_non_finite_pixels_are_named_at_load(tmp_path, split, dtype, value, words):
    folder = write_fashion_stand_in(tmp_path / "fm", n_train=16, n_test=8, gz=False)
    n = 16 if split == "train" else 8
    images = np.random.default_rng(0).random((n, 28, 28)).astype(dtype)
    images[3, 4, 5] = value
    images[5, 0, 0] = value  # the first bad pixel is the one named
    path = write_idx(folder / f"{split}-images-idx3-ubyte", images)
    with pytest.raises(ConfigError) as err:
        load_fashion_mnist(str(folder))
    assert _one_line(err).startswith(f"{path}: {words} (2 non-finite pixels in all) — ")


def test_float_images_whose_sum_overflows_are_refused(tmp_path):
    folder = write_fashion_stand_in(tmp_path / "fm", n_train=16, n_test=8, gz=False)
    path = write_idx(folder / "train-images-idx3-ubyte", np.full((16, 28, 28), 3e38, np.float32))
    with pytest.raises(ConfigError, match=rf"^{path}: has values too large to standardise \(mean inf"):
        load_fashion_mnist(str(folder))


def test_finite_float_images_still_load(tmp_path):
    folder = write_fashion_stand_in(tmp_path / "fm", n_train=16, n_test=8, gz=False)
    for split, n in (("train", 16), ("t10k", 8)):
        write_idx(folder / f"{split}-images-idx3-ubyte", np.random.default_rng(n).random((n, 28, 28)))
    train, test = load_fashion_mnist(str(folder))
    assert torch.isfinite(train.tensors[0]).all() and torch.isfinite(test.tensors[0]).all()


@pytest.mark.parametrize("case,words", [
    ("empty", "is empty (0 bytes) — "),
    ("empty_gz", "is empty (0 bytes after decompression) — "),
    ("bad_deflate", "cannot be read (Error -3 while decompressing data"),
    ("no_images", "holds no pixels (shape (0, 28, 28))"),
    ("zero_size", "holds no pixels (shape (8, 0, 0))"),
    ("other_size", "holds 32x32 images, the training images"),
    ("count", "holds (8, 28, 28) images for (7,) labels"),
])
def test_empty_cut_and_mismatched_files_fail_with_one_line(tmp_path, case, words):
    gz = case in ("empty_gz", "bad_deflate")
    folder = write_fashion_stand_in(tmp_path / "fm", n_train=16, n_test=8, gz=gz)
    suffix = ".gz" if gz else ""
    images, labels = folder / f"t10k-images-idx3-ubyte{suffix}", folder / f"t10k-labels-idx1-ubyte{suffix}"
    named = images
    if case == "empty":
        images.write_bytes(b"")
    elif case == "empty_gz":
        images.write_bytes(gzip.compress(b""))
    elif case == "bad_deflate":  # a valid 10-byte gzip header, then a deflate block of the reserved type 3
        raw = bytearray(gzip.compress(gzip.decompress(images.read_bytes())))
        raw[10] = 0xFF
        images.write_bytes(bytes(raw))
    elif case == "no_images":
        write_idx(images, np.zeros((0, 28, 28), np.uint8))
        write_idx(labels, np.zeros(0, np.uint8))
    elif case == "zero_size":
        write_idx(images, np.zeros((8, 0, 0), np.uint8))
    elif case == "other_size":
        write_idx(images, np.zeros((8, 32, 32), np.uint8))
    elif case == "count":
        write_idx(labels, np.zeros(7, np.uint8))
    with pytest.raises(ConfigError) as err:
        load_fashion_mnist(str(folder))
    msg = _one_line(err)
    assert msg.startswith(f"{named}: ") and words in msg, msg


def test_fashion_task_builds_a_one_channel_model(tmp_path):
    folder = write_fashion_stand_in(tmp_path / "fm", n_train=16, n_test=8)
    task = build_task({"name": "fashion_mnist", "data_dir": str(folder), "arch": "small_resnet",
                       "arch_options": {"depth": 8, "width": 8, "stem_stride": 2}})
    train, _ = task.build_datasets()
    model = task.build_model()
    logits, labels = task.forward(model, (train.tensors[0][:4], train.tensors[1][:4]), torch.device("cpu"))
    assert logits.shape == (4, 10) and model.conv1.in_channels == 1 and model.conv1.stride == (2, 2)


def test_stem_stride_halves_the_maps():
    seen = {}
    for stride in (1, 2):
        model = SmallResNet(depth=8, width=4, num_classes=10, in_channels=1, stem_stride=stride)
        model.layers.register_forward_hook(lambda m, i, o, s=stride: seen.__setitem__(s, o.shape))
        model(torch.zeros(1, 1, 28, 28))
    assert seen[1][-1] == 7 and seen[2][-1] == 4  # stages at 28/14/7 vs 14/7/4
    with pytest.raises(ValueError, match="stem_stride=3"):
        SmallResNet(stem_stride=3)


REAL = Path(idx.FASHION_MNIST_DIR)


@pytest.mark.skipif(not (REAL / "train-images-idx3-ubyte.gz").is_file(),
                    reason="apt-get install dataset-fashion-mnist")
def test_the_debian_files_when_installed():
    train, test = load_fashion_mnist()
    assert train.tensors[0].shape == (60000, 1, 28, 28) and test.tensors[0].shape == (10000, 1, 28, 28)
    assert torch.bincount(train.tensors[1]).tolist() == [6000] * 10  # balanced, as the data set's paper says
    assert torch.bincount(test.tensors[1]).tolist() == [1000] * 10


def test_recipe_stem_stride_is_checked_at_load_time():
    from dstrain.models import check_arch_options

    check_arch_options("small_resnet", {"stem_stride": 2})
    with pytest.raises(ConfigError, match=r"^task\.arch_options\.stem_stride: 3"):
        check_arch_options("small_resnet", {"stem_stride": 3})
