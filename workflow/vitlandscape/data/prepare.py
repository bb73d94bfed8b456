"""Data sets, prepared once into one tensor file: train/test splits and the evaluation subset.

Supported: `digits` (bundled with scikit-learn), `npz`, `cifar` (python-pickle batches),
`fashion_mnist` and `mnist` (IDX files), `cifar10` and `cifar100` (the official batches; these
four read by `data/files.py`), all held in memory, and `imagefolder` (ImageNet layout, `train/`
and optional `val/`), streamed from disk (see `data/imagefolder.py`): its prepared file holds
only the evaluation subset, as uint8. Pixels are scaled to [0, 1], grey images repeated to 3 channels, resized
to `image_size` and normalised with the ImageNet mean/std, as MAE does.

Consumers go through `eval_set`, `train_batches` and `ordered_batches`, which hide
whether a data set is in memory or streamed.
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitlandscape.data import common, files
from vitlandscape.data.common import IMAGENET_MEAN, IMAGENET_STD, DataError, eval_indices, require_path, split


def to_model_input(images: np.ndarray, image_size: int, max_value: float) -> torch.Tensor:
    """[N, H, W] or [N, H, W, C] pixels in [0, max_value] -> normalised float [N, 3, S, S]."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32) / max_value
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"images must be N,H,W or N,H,W,C with C in (1, 3); got shape {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).expand(-1, 3, -1, -1)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > image_size)
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).contiguous()


def _digits(cfg):
    from sklearn.datasets import load_digits
    digits = load_digits()
    return digits.images, digits.target, None, None, 16.0


def _npz(cfg):
    path = require_path(cfg)
    with np.load(path) as f:
        for key in ("images", "labels"):
            if key not in f:
                raise DataError(f"npz file {path} has no '{key}' array (arrays: {', '.join(f.files)})")
        test = (f["test_images"], f["test_labels"]) if "test_images" in f else (None, None)
        return f["images"], f["labels"], *test, 255.0


def _cifar(cfg):
    root = require_path(cfg)
    train = sorted(root.glob("data_batch_*"))
    if not train:
        raise DataError(f"data.path {root} holds no CIFAR 'data_batch_*' files")

    def read(paths):
        images, labels = [], []
        for file in paths:
            batch = files.load_pickle(file)
            images.append(batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.extend(batch.get(b"labels", batch.get(b"fine_labels")))
        return np.concatenate(images), np.asarray(labels)

    test = sorted(root.glob("test_batch*"))
    return *read(train), *(read(test) if test else (None, None)), 255.0


def _files(cfg):
    return *files.load(cfg["dataset"], cfg.get("path")), 255.0


# in memory; imagefolder streams
LOADERS = {"digits": _digits, "npz": _npz, "cifar": _cifar, **dict.fromkeys(files.DATASETS, _files)}


def prepare(cfg: dict) -> dict:
    """Load the configured data set into tensors, with the seeded evaluation subset."""
    if cfg["dataset"] == "imagefolder":
        from vitlandscape.data import imagefolder
        return imagefolder.prepare(cfg)
    if cfg["dataset"] not in LOADERS:
        raise DataError(f"data.dataset {cfg['dataset']!r} is not one of {', '.join(LOADERS)}, imagefolder")
    images, labels, test_images, test_labels, max_value = LOADERS[cfg["dataset"]](cfg)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    x = to_model_input(images, cfg["image_size"], max_value)
    if len(x) != len(labels):
        raise DataError(f"{len(x)} images but {len(labels)} labels")
    if test_images is None:
        train_idx, test_idx = split(len(x), cfg["test_fraction"], cfg["seed"])
        train_x, train_y, test_x, test_y = x[train_idx], labels[train_idx], x[test_idx], labels[test_idx]
    else:
        train_x, train_y = x, labels
        test_x = to_model_input(test_images, cfg["image_size"], max_value)
        test_y = torch.as_tensor(np.asarray(test_labels), dtype=torch.long)
    eval_idx = eval_indices(len(train_x), cfg["eval_samples"], common.eval_seed(cfg))
    return {"train_images": train_x, "train_labels": train_y,
            "test_images": test_x, "test_labels": test_y,
            "eval_index": eval_idx,
            "num_classes": int(max(train_y.max(), test_y.max() if len(test_y) else 0)) + 1,
            "dataset": cfg["dataset"], "image_size": cfg["image_size"]}


def load_prepared(path) -> dict:
    """The prepared file, memory-mapped: a streamed data set's evaluation subset is read
    from disk only as far as it is used."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prepared data {path} does not exist (run the prepare_data stage)")
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def is_streaming(prepared: dict) -> bool:
    return prepared.get("streaming", False)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, S, S] -> float in [0, 1], normalised with the ImageNet mean/std."""
    mean, std = IMAGENET_MEAN.to(images.device), IMAGENET_STD.to(images.device)
    return (images.float() / 255 - mean) / std


def eval_set(prepared: dict, device, normalised: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation subset on `device`: normalised float images [N, 3, S, S] and labels [N].

    With `normalised=False`, a streamed data set's images stay uint8 (a quarter of the
    bytes; normalise them batch by batch with `normalise`)."""
    if is_streaming(prepared):  # uint8 crosses to the device, a quarter of the float bytes
        images = prepared["eval_images"].to(device)
        return normalise(images) if normalised else images, prepared["eval_labels"].to(device)
    index = prepared["eval_index"]
    return prepared["train_images"][index].to(device), prepared["train_labels"][index].to(device)


def split_sizes(prepared: dict) -> tuple[int, int]:
    """(training, test) image counts."""
    if is_streaming(prepared):
        return prepared["train_count"], prepared["test_count"]
    return len(prepared["train_images"]), len(prepared["test_images"])


class TensorBatches:
    """Shuffled batches of in-memory tensors from a seeded generator, one epoch per iteration.

    The last incomplete batch is dropped unless it is the only one.
    """

    def __init__(self, tensors: tuple, batch_size: int, seed: int):
        self.tensors, self.batch_size = tensors, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return max(1, len(self.tensors[0]) // self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.tensors[0]), generator=self.generator)
        for i in range(len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield tuple(t[index] for t in self.tensors)


def chunks(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> list[tuple]:
    return [(images[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, len(images), batch_size)]


def train_batches(prepared: dict, recipe: dict, batch_size: int, seed: int, workers: int, device):
    """Shuffled (images, labels) training batches, one epoch per iteration, `len()` of them.

    Streamed folders come cropped and flipped as `recipe` (recipes.resolve) says, image by
    image as they are decoded; in-memory data sets come as stored (augment/batch.py
    augments those on their device).
    """
    if is_streaming(prepared):
        from vitlandscape.data import imagefolder
        return imagefolder.train_loader(prepared, recipe, batch_size, seed, workers, torch.device(device))
    return TensorBatches((prepared["train_images"].to(device), prepared["train_labels"].to(device)),
                         batch_size, seed)


def ordered_batches(prepared: dict, split: str, batch_size: int, workers: int, device):
    """(images, labels) batches of the 'train' or 'test' split in stored order, not augmented."""
    if is_streaming(prepared):
        from vitlandscape.data import imagefolder
        return imagefolder.ordered_loader(prepared, split, batch_size, workers, torch.device(device))
    return chunks(prepared[f"{split}_images"].to(device), prepared[f"{split}_labels"].to(device), batch_size)


def prepare_data(cfg: dict, out) -> None:
    """The prepare-data stage: prepare the data set and write it to `out` atomically."""
    from vitlandscape.storage.checkpoints import atomic_save
    prepared = prepare(cfg)
    atomic_save(prepared, out)
    n_train, n_test = split_sizes(prepared)
    print(f"{cfg['dataset']}: {n_train} train, {n_test} test, {len(prepared['eval_index'])} eval images, "
          f"{prepared['num_classes']} classes -> {out}")
