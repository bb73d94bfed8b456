"""Data sets read from their official files, no download: the IDX files of MNIST and
Fashion-MNIST, the python-pickle batches of CIFAR-10 and CIFAR-100.

Each file is checked against its own header or layout, and every error names the file, so
a truncated download or a wrong folder is caught here rather than as a shape error later.
The training files give the training split and the test files the test split, in stored
order. numpy only, no torchvision.
"""
import gzip
import math
import pickle
from pathlib import Path

import numpy as np

from vitlandscape.data.common import DataError

IDX_SETS = ("fashion_mnist", "mnist")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # 0x00000803, 0x00000801: uint8 values, 3 or 1 dimensions
DEFAULT_PATHS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}  # where the Debian package installs
APT_PACKAGES = {"fashion_mnist": "dataset-fashion-mnist"}
# dataset: (the folder the official archive unpacks to, training files, test files, labels key, classes)
CIFAR = {"cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
         "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100)}
DATASETS = (*IDX_SETS, *CIFAR)

# What the CIFAR pickles need to rebuild their dicts, lists and numpy arrays (numpy >= 2
# spells numpy.core as numpy._core; protocol 5 rebuilds arrays with _frombuffer, protocol 2
# from Python 3 stores bytes through _codecs.encode, and labels may be numpy scalars).
SAFE_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                *((f"numpy.{core}.{name}", attr) for core in ("core", "_core") for name, attr in
                  (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")))}


def locate(dataset: str, path: str | None) -> list[Path]:
    """The data set's files, in the order IDX_FILES or CIFAR lists them; IDX files plain or .gz.

    For CIFAR, data.path may be the batches' folder or the folder above it that holds
    `cifar-10-batches-py/` or `cifar-100-python/` (where the official archive unpacks).
    """
    path = path or DEFAULT_PATHS.get(dataset)
    if not path:
        raise DataError(f"data.path is required for dataset {dataset!r}")
    root = Path(path)
    if dataset in IDX_SETS:
        names, where = IDX_FILES, "each plain or .gz"
        candidates = [[root / name, root / f"{name}.gz"] for name in names]
    else:
        folder, train, test, _, _ = CIFAR[dataset]
        root = root / folder if (root / folder).is_dir() else root
        names, where = train + test, f"in data.path or in its {folder}/"
        candidates = [[root / name] for name in names]
    found = [next((p for p in paths if p.is_file()), None) for paths in candidates]
    missing = [name for name, file in zip(names, found) if file is None]
    if missing:
        state = "does not exist" if not root.is_dir() else f"lacks {', '.join(missing)}"
        install = f"; `apt-get install {APT_PACKAGES[dataset]}` installs them" if dataset in APT_PACKAGES else ""
        raise DataError(f"data.path {root} {state}; {dataset} expects {', '.join(names)} ({where}){install}")
    return found


def load(dataset: str, path: str | None) -> tuple:
    """(train images, train labels, test images, test labels): uint8 [N, 28, 28] or [N, 32, 32, 3]."""
    files = locate(dataset, path)
    if dataset in IDX_SETS:
        return (*_idx_split(files[0], files[1]), *_idx_split(files[2], files[3]))
    _, train, _, key, classes = CIFAR[dataset]
    return (*_cifar_split(files[:len(train)], key, classes), *_cifar_split(files[len(train):], key, classes))


def _read(file: Path) -> bytes:
    try:
        with (gzip.open if file.suffix == ".gz" else open)(file, "rb") as f:
            return f.read()
    except (OSError, EOFError) as err:  # a damaged or cut-off gzip stream
        raise DataError(f"{file}: cannot be read ({err})") from None


def read_idx(file: Path, magic: int, dims: int) -> np.ndarray:
    """One IDX file: big-endian int32 magic number and `dims` sizes, then uint8 values row-major."""
    data = _read(file)
    header = 4 * (1 + dims)
    if len(data) < header:
        raise DataError(f"{file}: {len(data)} bytes, shorter than the {header}-byte IDX header")
    found, *shape = np.frombuffer(data, ">i4", count=1 + dims).tolist()
    if found != magic:
        raise DataError(f"{file}: magic number {found} (0x{found & 0xFFFFFFFF:08x}), expected {magic} (0x{magic:08x})")
    expected = header + math.prod(shape)
    if min(shape) < 0 or len(data) != expected:
        raise DataError(f"{file}: {len(data)} bytes, expected {expected} (a {header}-byte header + "
                        f"{' x '.join(map(str, shape))} values): the file is truncated or overlong")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape).copy()  # writable, as torch wants


def _idx_split(images_file: Path, labels_file: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_file, IMAGES_MAGIC, 3), read_idx(labels_file, LABELS_MAGIC, 1)
    if len(images) != len(labels):
        raise DataError(f"{images_file} holds {len(images)} images but {labels_file} {len(labels)} labels")
    _check_labels(labels_file, labels, 10)
    return images, labels


def _check_labels(file: Path, labels: np.ndarray, classes: int) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(f"{file}: labels span {labels.min()}..{labels.max()}, expected 0..{classes - 1}")


class _Unpickler(pickle.Unpickler):
    """Rebuilds only what SAFE_GLOBALS names: a pickle may name any callable, and loading it calls it."""

    def find_class(self, module, name):
        if (module, name) not in SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def load_pickle(file: Path):
    """A CIFAR batch (a dict with bytes keys, as the Python 2 pickles give them) through _Unpickler."""
    try:
        with open(file, "rb") as f:
            return _Unpickler(f, encoding="bytes").load()
    except Exception as err:  # a damaged pickle fails in many ways (EOFError, KeyError, ...)
        raise DataError(f"{file}: not a CIFAR batch this library reads ({type(err).__name__}: {err})") from None


def _cifar_split(files: list[Path], key: bytes, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Batches of channel-first rows (1024 red, green, blue values each) -> uint8 [N, 32, 32, 3]."""
    images, labels = [], []
    for file in files:
        batch = load_pickle(file)
        if not isinstance(batch, dict) or b"data" not in batch or key not in batch:
            raise DataError(f"{file}: expected a dict with keys b'data' and {key!r}")
        data, y = batch[b"data"], np.asarray(batch[key])
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{file}: b'data' is {getattr(data, 'dtype', type(data).__name__)} of shape "
                            f"{getattr(data, 'shape', '?')}, expected uint8 [n, 3072]")
        if y.shape != (len(data),) or y.dtype.kind not in "iu":
            raise DataError(f"{file}: {key!r} holds {y.shape} {y.dtype} values, expected {len(data)} integer labels")
        _check_labels(file, y, classes)
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)
