"""What data preparation and the streamed image folders share: the normalisation constants,
the data error, `data.path` and the seeded splits. No torchvision, and neither of the two
modules that use it: data/prepare.py imports data/imagefolder.py (lazily), never the reverse.
"""
from pathlib import Path

import torch

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class DataError(ValueError):
    pass


def split(n: int, test_fraction: float, seed: int):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * test_fraction))
    return order[n_test:].sort().values, order[:n_test].sort().values


def require_path(cfg) -> Path:
    if not cfg.get("path"):
        raise DataError(f"data.path is required for dataset {cfg['dataset']!r}")
    path = Path(cfg["path"])
    if not path.exists():
        raise DataError(f"data.path {path} does not exist")
    return path


def eval_seed(cfg: dict) -> int:
    """The seed of the evaluation subset: a study's `eval_seed` (another subset of the same
    training split), else `data.seed`, which also splits train from test."""
    return cfg.get("eval_seed", cfg["seed"])


def eval_indices(n_train: int, eval_samples: int, seed: int) -> torch.Tensor:
    """A seeded subset of the training split; the whole split in stored order when it is smaller."""
    if eval_samples >= n_train:
        return torch.arange(n_train)
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed + 1))
    return order[:eval_samples].sort().values
