"""Data sets from their official files: IDX (MNIST, Fashion-MNIST) and CIFAR pickle batches.

The files are written byte by byte here, and the expected model input is computed here from
the same known pixel values in float64 (/255, grey repeated to 3 channels, ImageNet mean and
std), independently of the reader. Comparisons allow 1e-6: the library works in float32,
whose rounding of the three operations and of the constants stays below 1e-6 on values of
at most 2.7, while one grey level moves a normalised value by 1/255/0.229 > 0.017, so a
pixel off by one level, a transposed or a flipped image fails.
"""
import gzip
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vitlandscape import configcheck
from vitlandscape.data import files, prepare
from vitlandscape.data.common import DataError

ROOT = Path(__file__).resolve().parents[1]
DATA_DEFAULTS = {key: spec["default"] for key, spec in
                 yaml.safe_load((ROOT / "config/schema.yaml").read_text())["properties"]["data"]["properties"].items()}
MEAN, STD = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1), np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
IDX_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def _cfg(**overrides):
    return {**DATA_DEFAULTS, **overrides}


def _expected(values) -> np.ndarray:
    """Nested lists of pixels, [N][H][W] (grey) or [N][3][H][W], -> the normalised model input."""
    x = np.array(values, dtype=np.float64) / 255
    if x.ndim == 3:
        x = np.repeat(x[:, None], 3, axis=1)
    return (x - MEAN) / STD


def _close(tensor: torch.Tensor, expected: np.ndarray) -> None:
    np.testing.assert_allclose(tensor.double().numpy(), expected, rtol=0, atol=1e-6)


# ---- IDX ----------------------------------------------------------------------------------

def grey(i: int, r: int, c: int) -> int:
    """Pixel (r, c) of image i: neither symmetric in r and c nor under a flip of either."""
    return (7 * i + 3 * r + 11 * c + r * r) % 256


def grey_images(first: int, n: int, size: int = 28) -> list:
    return [[[grey(i, r, c) for c in range(size)] for r in range(size)] for i in range(first, first + n)]


def idx_images(images: list, magic: int = 2051) -> bytes:
    n, rows, cols = len(images), len(images[0]), len(images[0][0])
    return struct.pack(">IIII", magic, n, rows, cols) + bytes(v for image in images for row in image for v in row)


def idx_labels(labels: list) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + bytes(labels)


TRAIN_LABELS, TEST_LABELS = [3, 1, 4], [9, 0]


def write_idx(folder: Path, gz: bool, contents: dict | None = None) -> Path:
    """The four IDX files (3 train, 2 test images of 28 x 28); `contents` replaces some files' bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    files = dict(zip(IDX_NAMES, [idx_images(grey_images(0, 3)), idx_labels(TRAIN_LABELS),
                                 idx_images(grey_images(3, 2)), idx_labels(TEST_LABELS)]))
    for name, data in {**files, **(contents or {})}.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_idx_files_give_the_splits_in_stored_order_unresized(tmp_path, dataset, gz):
    prepared = prepare.prepare(_cfg(dataset=dataset, path=str(write_idx(tmp_path, gz)), image_size=28))
    assert prepared["train_images"].shape == (3, 3, 28, 28) and prepared["test_images"].shape == (2, 3, 28, 28)
    _close(prepared["train_images"], _expected(grey_images(0, 3)))
    _close(prepared["test_images"], _expected(grey_images(3, 2)))
    assert prepared["train_labels"].tolist() == TRAIN_LABELS and prepared["test_labels"].tolist() == TEST_LABELS
    assert prepared["num_classes"] == 10 and prepared["eval_index"].tolist() == [0, 1, 2]


def test_idx_images_are_resized_to_image_size(tmp_path):
    prepared = prepare.prepare(_cfg(dataset="mnist", path=str(write_idx(tmp_path, gz=True))))  # image_size 16
    assert prepared["train_images"].shape == (3, 3, 16, 16) and prepared["test_images"].shape == (2, 3, 16, 16)


def test_plain_and_gzip_files_may_mix(tmp_path):
    write_idx(tmp_path, gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").rename(tmp_path / "moved")
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress((tmp_path / "moved").read_bytes()))
    prepared = prepare.prepare(_cfg(dataset="mnist", path=str(tmp_path), image_size=28))
    _close(prepared["test_images"], _expected(grey_images(3, 2)))


def test_idx_header_sizes_are_rows_then_columns(tmp_path):
    """Non-square images, read without the model input's resize: rows and columns not swapped."""
    images = [[[grey(i, r, c) for c in range(7)] for r in range(5)] for i in range(2)]
    write_idx(tmp_path, gz=False, contents={IDX_NAMES[2]: idx_images(images), IDX_NAMES[3]: idx_labels([1, 2])})
    test_images = files.load("mnist", str(tmp_path))[2]
    assert test_images.dtype == np.uint8 and test_images.tolist() == images


GOOD_TRAIN_IMAGES = idx_images(grey_images(0, 3))


@pytest.mark.parametrize(("contents", "message"), [
    ({IDX_NAMES[0]: idx_images(grey_images(0, 3), magic=2049)},
     r"train-images-idx3-ubyte(\.gz)?: magic number 2049 \(0x00000801\), expected 2051 \(0x00000803\)"),
    ({IDX_NAMES[1]: struct.pack(">II", 2051, 3) + bytes(TRAIN_LABELS)}, r"train-labels-idx1-ubyte(\.gz)?: magic number 2051"),
    ({IDX_NAMES[0]: GOOD_TRAIN_IMAGES[:-1]},
     r"train-images-idx3-ubyte(\.gz)?: 2367 bytes, expected 2368 \(a 16-byte header \+ 3 x 28 x 28 values\).*truncated"),
    ({IDX_NAMES[0]: GOOD_TRAIN_IMAGES + b"\0"}, r"train-images-idx3-ubyte(\.gz)?: 2369 bytes, expected 2368"),
    ({IDX_NAMES[3]: idx_labels(TEST_LABELS)[:5]}, r"t10k-labels-idx1-ubyte(\.gz)?: 5 bytes, shorter than the 8-byte"),
    ({IDX_NAMES[1]: idx_labels([3, 1])},
     r"train-images-idx3-ubyte(\.gz)? holds 3 images but .*train-labels-idx1-ubyte(\.gz)? 2 labels"),
    ({IDX_NAMES[3]: idx_labels([9, 10])}, r"t10k-labels-idx1-ubyte(\.gz)?: labels span 9\.\.10, expected 0\.\.9"),
])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_bad_idx_files_are_refused_by_name(tmp_path, contents, message, gz):
    with pytest.raises(DataError, match=message):
        prepare.prepare(_cfg(dataset="mnist", path=str(write_idx(tmp_path, gz, contents))))


def test_cut_gzip_stream_is_refused_by_name(tmp_path):
    write_idx(tmp_path, gz=True)
    file = tmp_path / "train-images-idx3-ubyte.gz"
    file.write_bytes(file.read_bytes()[:100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: cannot be read"):
        prepare.prepare(_cfg(dataset="mnist", path=str(tmp_path)))


def test_missing_idx_files_name_the_expected_ones(tmp_path):
    write_idx(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    expected = ", ".join(IDX_NAMES) + r" \(each plain or \.gz\)"
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path))} lacks t10k-labels-idx1-ubyte; mnist expects {expected}$"):
        prepare.prepare(_cfg(dataset="mnist", path=str(tmp_path)))
    with pytest.raises(DataError, match=rf"absent does not exist; fashion_mnist expects {expected}; "
                                        r"`apt-get install dataset-fashion-mnist` installs them"):
        prepare.prepare(_cfg(dataset="fashion_mnist", path=str(tmp_path / "absent")))
    with pytest.raises(DataError, match="data.path is required for dataset 'mnist'"):
        prepare.prepare(_cfg(dataset="mnist"))


def test_config_check_uses_the_readers_file_check(tmp_path):
    """Before any job runs: a folder without the files is named, one with them passes."""
    assert configcheck._data_problems({"dataset": "mnist", "path": str(write_idx(tmp_path, gz=True))}) == []
    assert "lacks data_batch_1" in configcheck._data_problems({"dataset": "cifar10", "path": str(tmp_path)})[0]
    assert configcheck._data_problems({"dataset": "mnist", "path": None}) == [
        "data.path is required for dataset 'mnist'"]
    fashion = configcheck._data_problems({"dataset": "fashion_mnist", "path": None})
    assert (fashion == []) if DEBIAN.is_dir() else ("apt-get install dataset-fashion-mnist" in fashion[0])


# ---- CIFAR --------------------------------------------------------------------------------

def colour(i: int, ch: int, r: int, c: int) -> int:
    return (5 * i + 40 * ch + 3 * r + 7 * c + r * c // 4) % 256


def colour_images(first: int, n: int) -> list:
    """[n][3][32][32]: CIFAR's own channel-first order, the one the model input has too."""
    return [[[[colour(i, ch, r, c) for c in range(32)] for r in range(32)] for ch in range(3)]
            for i in range(first, first + n)]


def batch(first: int, n: int, key: bytes = b"labels", classes: int = 10) -> dict:
    rows = [[v for plane in image for row in plane for v in row] for image in colour_images(first, n)]
    return {b"data": np.array(rows, dtype=np.uint8), key: [(3 * i + 1) % classes for i in range(first, first + n)]}


def write_pickle(file: Path, obj, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10(folder: Path) -> Path:
    """Five training batches of 2 images, a test batch of 3."""
    for k in range(5):
        write_pickle(folder / f"data_batch_{k + 1}", batch(2 * k, 2), protocol=2 + k % 4)  # protocols 2 to 5
    write_pickle(folder / "test_batch", batch(10, 3))
    return folder


@pytest.mark.parametrize("parent", [False, True], ids=["batches", "folder-above"])
def test_cifar10_batches_in_stored_order(tmp_path, parent):
    folder = write_cifar10(tmp_path / "cifar-10-batches-py" if parent else tmp_path)
    prepared = prepare.prepare(_cfg(dataset="cifar10", path=str(tmp_path), image_size=32, test_fraction=0.5))
    assert prepared["train_images"].shape == (10, 3, 32, 32) and prepared["test_images"].shape == (3, 3, 32, 32)
    _close(prepared["train_images"], _expected(colour_images(0, 10)))
    _close(prepared["test_images"], _expected(colour_images(10, 3)))
    assert prepared["train_labels"].tolist() == [(3 * i + 1) % 10 for i in range(10)]
    assert prepared["test_labels"].tolist() == [1, 4, 7] and prepared["num_classes"] == 10
    assert folder.name == ("cifar-10-batches-py" if parent else tmp_path.name)


def test_cifar100_train_and_test_files_resized(tmp_path):
    write_pickle(tmp_path / "cifar-100-python" / "train", batch(0, 4, b"fine_labels", 100) | {b"fine_labels": [99, 0, 5, 42]})
    write_pickle(tmp_path / "cifar-100-python" / "test", batch(4, 2, b"fine_labels", 100))
    prepared = prepare.prepare(_cfg(dataset="cifar100", path=str(tmp_path)))  # image_size 16
    assert prepared["train_images"].shape == (4, 3, 16, 16) and prepared["test_images"].shape == (2, 3, 16, 16)
    assert prepared["train_labels"].tolist() == [99, 0, 5, 42] and prepared["num_classes"] == 100


class Shell:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar"])
def test_pickle_naming_another_global_is_refused(tmp_path, dataset):
    write_cifar10(tmp_path)
    marker = tmp_path / "ran"
    write_pickle(tmp_path / "data_batch_2", {**batch(2, 2), b"extra": Shell(marker)})
    with pytest.raises(DataError, match=r"data_batch_2: not a CIFAR batch.*global posix\.system is not allowed"):
        prepare.prepare(_cfg(dataset=dataset, path=str(tmp_path)))
    assert not marker.exists()


@pytest.mark.parametrize(("change", "message"), [
    ({b"data": np.zeros((2, 3000), np.uint8)}, r"data_batch_3: b'data' is uint8 of shape \(2, 3000\), expected uint8"),
    ({b"data": np.zeros((2, 3072), np.float32)}, r"data_batch_3: b'data' is float32 of shape \(2, 3072\)"),
    ({b"data": np.zeros((2, 32, 32, 3), np.uint8)}, r"b'data' is uint8 of shape \(2, 32, 32, 3\)"),
    ({b"labels": [1, 2, 3]}, r"data_batch_3: b'labels' holds \(3,\) int64 values, expected 2 integer labels"),
    ({b"labels": [1, 10]}, r"data_batch_3: labels span 1\.\.10, expected 0\.\.9"),
    ({b"labels": None, b"fine_labels": [1, 2]}, r"data_batch_3: expected a dict with keys b'data' and b'labels'"),
])
def test_bad_cifar_batches_are_refused_by_name(tmp_path, change, message):
    write_cifar10(tmp_path)
    content = {k: v for k, v in {**batch(4, 2), **change}.items() if v is not None}
    write_pickle(tmp_path / "data_batch_3", content)
    with pytest.raises(DataError, match=message):
        prepare.prepare(_cfg(dataset="cifar10", path=str(tmp_path)))


def test_missing_or_damaged_cifar_files_are_named(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(DataError, match=r"lacks data_batch_4; cifar10 expects data_batch_1, data_batch_2, data_batch_3, "
                                        r"data_batch_4, data_batch_5, test_batch \(in data.path or in its "
                                        r"cifar-10-batches-py/\)$"):
        prepare.prepare(_cfg(dataset="cifar10", path=str(tmp_path)))
    with pytest.raises(DataError, match=r"lacks train, test; cifar100 expects train, test"):
        prepare.prepare(_cfg(dataset="cifar100", path=str(tmp_path)))
    write_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(DataError, match=r"test_batch: not a CIFAR batch"):
        prepare.prepare(_cfg(dataset="cifar10", path=str(tmp_path)))


# ---- the real files -----------------------------------------------------------------------

@pytest.mark.skipif(not DEBIAN.is_dir(), reason=f"{DEBIAN} absent (apt-get install dataset-fashion-mnist)")
def test_debian_fashion_mnist():
    prepared = prepare.prepare(_cfg(dataset="fashion_mnist", image_size=28, eval_samples=8))  # path null: Debian's
    assert prepared["train_images"].shape == (60_000, 3, 28, 28) and prepared["test_images"].shape == (10_000, 3, 28, 28)
    assert prepared["num_classes"] == 10 and len(prepared["eval_index"]) == 8
    assert torch.bincount(prepared["train_labels"]).tolist() == [6000] * 10
    assert torch.bincount(prepared["test_labels"]).tolist() == [1000] * 10
