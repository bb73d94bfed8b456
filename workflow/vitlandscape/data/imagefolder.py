"""ImageNet-layout folders, streamed from disk: no stage holds the training split in memory.

`prepare` decodes only the seeded evaluation subset of `train/` (evaluation transform) into
one uint8 tensor; training and accuracy read the folders batch by batch through
torchvision's ImageFolder and a DataLoader. The loader makes the recipe's crop and flip on
each decoded image; the rest of the recipe's augmentation works on the batch
(augment/batch.py). What stays per file in memory is ImageFolder's list of (path, class),
about 150 bytes a file.
"""
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from torchvision import transforms
from torchvision.datasets import ImageFolder

from vitlandscape import progress
from vitlandscape.data import common

BICUBIC = transforms.InterpolationMode.BICUBIC
_NORMALISE = [transforms.ToTensor(), transforms.Normalize(common.IMAGENET_MEAN.flatten().tolist(),
                                                          common.IMAGENET_STD.flatten().tolist())]


def _centre_crop(size: int) -> list:
    """Short side to size / 0.875 (256 for 224), bicubic, then the centre `size` crop."""
    return [transforms.Resize(round(size / 0.875), interpolation=BICUBIC), transforms.CenterCrop(size)]


def eval_transform(size: int) -> transforms.Compose:
    """The evaluation transform, as uint8 [3, S, S] (normalised later, on the device)."""
    return transforms.Compose([*_centre_crop(size), transforms.PILToTensor()])


def train_transform(size: int, crop_scale, hflip: float) -> transforms.Compose:
    """A recipe's random resized crop (area fraction in `crop_scale`, bicubic; None: the
    evaluation's centre crop) and horizontal flip (probability `hflip`), then normalised
    float [3, S, S]."""
    crop = (_centre_crop(size) if crop_scale is None else
            [transforms.RandomResizedCrop(size, scale=tuple(crop_scale), interpolation=BICUBIC)])
    return transforms.Compose([*crop, transforms.RandomHorizontalFlip(hflip), *_NORMALISE])


def _folder(path: Path, transform=None) -> ImageFolder:
    try:
        return ImageFolder(path, transform=transform)
    except OSError as err:  # no class folder, or no image in one
        raise common.DataError(f"data.path: cannot read {path} as an image folder: {err}") from err


def prepare(cfg: dict) -> dict:
    """Scan `train/` (and `val/`), decode the evaluation subset, keep the rest on disk."""
    root = common.require_path(cfg).resolve()
    if not (root / "train").is_dir():
        raise common.DataError(f"data.path {root} has no 'train' folder (ImageFolder layout expected)")
    train = _folder(root / "train")
    folders = {"train": len(train)}
    if (root / "val").is_dir():
        test = _folder(root / "val")
        if test.classes != train.classes:
            raise common.DataError(f"data.path {root}: the class folders of val/ ({len(test.classes)}) "
                                   f"differ from those of train/ ({len(train.classes)})")
        folders["val"] = len(test)
        train_index = test_index = None  # whole folders
        sizes = len(train), len(test)
    else:  # hold out data.test_fraction of train/, as for the other data sets
        train_index, test_index = common.split(len(train), cfg["test_fraction"], cfg["seed"])
        sizes = len(train_index), len(test_index)
    eval_index = common.eval_indices(sizes[0], cfg["eval_samples"], common.eval_seed(cfg))
    files = eval_index if train_index is None else train_index[eval_index]
    return {"streaming": True, "dataset": "imagefolder", "root": str(root), "folders": folders,
            "test_folder": "val" if "val" in folders else "train",
            "train_index": train_index, "test_index": test_index,
            "train_count": sizes[0], "test_count": sizes[1],
            "num_classes": len(train.classes), "image_size": cfg["image_size"],
            "eval_index": eval_index, "eval_images": decode(train, files.tolist(), cfg["image_size"]),
            "eval_labels": torch.tensor([train.targets[i] for i in files.tolist()], dtype=torch.long),
            "eval_files": [str(Path(train.samples[i][0]).relative_to(root)) for i in files.tolist()]}


def decode(folder: ImageFolder, files: list[int], size: int) -> torch.Tensor:
    """The given files with the evaluation transform, as uint8 [N, 3, S, S], filled one image
    at a time into a preallocated tensor: peak memory is the subset plus one image."""
    transform = eval_transform(size)
    images = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    for row, i in enumerate(progress.bar(files, "decode eval subset", unit="img")):
        images[row] = transform(folder.loader(folder.samples[i][0]))
    return images


def dataset(prepared: dict, split: str, transform) -> torch.utils.data.Dataset:
    """The 'train' or 'test' split of a prepared folder, checked against the file counts at
    preparation."""
    name = "train" if split == "train" else prepared["test_folder"]
    path = Path(prepared["root"]) / name
    folder = _folder(path, transform)
    if len(folder) != prepared["folders"][name]:
        raise common.DataError(f"{path} now holds {len(folder)} images, {prepared['folders'][name]} when the data "
                               f"were prepared: rerun prepare_data (delete results/data/imagefolder.pt)")
    index = prepared[f"{split}_index"]
    return folder if index is None else Subset(folder, index.tolist())


class SeededShuffle(torch.utils.data.Sampler):
    """A seeded permutation per epoch, each index paired with a seed for its augmentation."""

    def __init__(self, n: int, seed: int):
        self.n, self.generator = n, torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator)
        seeds = torch.randint(2 ** 62, (self.n,), generator=self.generator)
        return iter(zip(order.tolist(), seeds.tolist()))


class SeededAugment(torch.utils.data.Dataset):
    """Item (index, seed): the image augmented with torch's RNG seeded by `seed`, so the crops
    depend on the sampler's seed alone, not on `data.workers` or on the decoding process."""

    def __init__(self, images: torch.utils.data.Dataset, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item):
        index, seed = item
        image, label = self.images[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label


def _loader(ds, batch_size: int, workers: int, device: torch.device, **kwargs) -> DataLoader:
    # The generator only feeds the DataLoader's worker seeds, which would otherwise be drawn
    # from (and advance) the global RNG that the training steps use.
    return DataLoader(ds, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(0), **kwargs)


def train_loader(prepared: dict, recipe: dict, batch_size: int, seed: int, workers: int,
                 device: torch.device) -> DataLoader:
    """Batches cropped and flipped as `recipe` (recipes.resolve) says, in a seeded order; the
    last incomplete batch is dropped unless it is the only one (as for in-memory data)."""
    images = dataset(prepared, "train", transform=None)
    ds = SeededAugment(images, train_transform(prepared["image_size"], recipe["crop_scale"], recipe["hflip"]))
    return _loader(ds, batch_size, workers, device, sampler=SeededShuffle(len(ds), seed),
                   drop_last=len(ds) >= batch_size)


def ordered_loader(prepared: dict, split: str, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    transform = transforms.Compose([*_centre_crop(prepared["image_size"]), *_NORMALISE])
    return _loader(dataset(prepared, split, transform), batch_size, workers, device)
