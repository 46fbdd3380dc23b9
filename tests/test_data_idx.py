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
