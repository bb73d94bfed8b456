"""Data sets: loaders, normalisation, splits and the evaluation subset."""
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitlandscape.data import common, imagefolder, prepare
from vitlandscape.data.common import DataError


def _cfg(**overrides):
    return {"dataset": "digits", "path": None, "image_size": 16, "eval_samples": 100, "seed": 0,
            "test_fraction": 0.2, **overrides}


def test_digits_are_upscaled_normalised_and_split():
    prepared = prepare.prepare(_cfg())
    train, test = prepared["train_images"], prepared["test_images"]
    assert train.shape == (1438, 3, 16, 16) and test.shape == (359, 3, 16, 16)
    assert prepared["num_classes"] == 10
    pixels = train * common.IMAGENET_STD + common.IMAGENET_MEAN  # back to [0, 1]
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2])  # grey repeated to 3 channels
    assert len(prepared["eval_index"]) == 100 and prepared["eval_index"].unique().numel() == 100


def test_eval_subset_is_seeded_and_whole_split_when_large():
    a, b = common.eval_indices(500, 50, seed=3), common.eval_indices(500, 50, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, common.eval_indices(500, 50, seed=4))
    assert torch.equal(common.eval_indices(40, 50, seed=3), torch.arange(40))
    assert torch.equal(common.eval_indices(40, 40, seed=3), torch.arange(40))


def test_npz_with_test_split_and_grey_images(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "grey.npz"
    np.savez(path, images=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), labels=np.arange(20) % 4,
             test_images=rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), test_labels=np.arange(6) % 4)
    prepared = prepare.prepare(_cfg(dataset="npz", path=str(path), eval_samples=8))
    assert prepared["train_images"].shape == (20, 3, 16, 16) and prepared["test_images"].shape == (6, 3, 16, 16)
    assert prepared["num_classes"] == 4


def test_npz_errors_name_the_problem(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, pictures=np.zeros((2, 8, 8), dtype=np.uint8), labels=np.zeros(2))
    with pytest.raises(DataError, match=r"has no 'images' array \(arrays: pictures, labels\)"):
        prepare.prepare(_cfg(dataset="npz", path=str(path)))
    with pytest.raises(DataError, match="data.path is required for dataset 'npz'"):
        prepare.prepare(_cfg(dataset="npz"))
    with pytest.raises(DataError, match="does not exist"):
        prepare.prepare(_cfg(dataset="npz", path=str(tmp_path / "absent.npz")))
    np.savez(path, images=np.zeros((3, 8, 8), dtype=np.uint8), labels=np.zeros(2))
    with pytest.raises(DataError, match="3 images but 2 labels"):
        prepare.prepare(_cfg(dataset="npz", path=str(path)))


def test_cifar_batches(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", 10), ("data_batch_2", 10), ("test_batch", 5)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(np.arange(n) % 10)}
        with open(tmp_path / name, "wb") as f:
            pickle.dump(batch, f)
    prepared = prepare.prepare(_cfg(dataset="cifar", path=str(tmp_path), image_size=32, eval_samples=4))
    assert prepared["train_images"].shape == (20, 3, 32, 32) and prepared["test_images"].shape == (5, 3, 32, 32)
    # channel-first bytes: the first 1024 values are the red plane
    with open(tmp_path / "data_batch_1", "rb") as f:
        first = pickle.load(f)[b"data"][0]
    red = torch.tensor(first[:1024].reshape(32, 32), dtype=torch.float32) / 255
    restored = prepared["train_images"][0, 0] * common.IMAGENET_STD[0, 0, 0, 0] + common.IMAGENET_MEAN[0, 0, 0, 0]
    torch.testing.assert_close(restored, red, rtol=0, atol=1e-5)


CLASSES = ("cat", "dog", "emu")


@pytest.fixture
def folder(tmp_path):
    """train/ (5 images a class) and val/ (2 a class): JPEG and PNG, grey and colour, odd sizes."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("val", 2)):
        for c, cls in enumerate(CLASSES):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                h, w = (23 + 7 * i, 41) if i % 2 else (50, 19 + 3 * c)
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                image = Image.fromarray(pixels).convert("L") if i == 3 else Image.fromarray(pixels)
                image.save(tmp_path / split / cls / f"{i:02d}.{'png' if i % 2 else 'jpg'}")
    return tmp_path


def reference_decode(path, size: int) -> np.ndarray:
    """The evaluation transform written out with PIL: short side to round(size / 0.875),
    bicubic, then the centred size x size crop (torchvision's rounding), as uint8 C,H,W."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        short = round(size / 0.875)
        w, h = img.size
        w, h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        img = img.resize((w, h), Image.BICUBIC)
        top, left = int(round((h - size) / 2)), int(round((w - size) / 2))
        return np.asarray(img.crop((left, top, left + size, top + size))).transpose(2, 0, 1)


def test_imagefolder_prepares_only_the_eval_subset_as_uint8(folder):
    prepared = prepare.prepare(_cfg(dataset="imagefolder", path=str(folder), eval_samples=6, seed=3))
    assert prepared["streaming"] and "train_images" not in prepared and "test_images" not in prepared
    assert (prepared["train_count"], prepared["test_count"], prepared["num_classes"]) == (15, 6, 3)
    assert prepared["root"] == str(folder.resolve()) and prepared["image_size"] == 16
    assert torch.equal(prepared["eval_index"], common.eval_indices(15, 6, seed=3))
    # ImageFolder order: sorted class folders, sorted files within each
    files = [f"train/{cls}/{i:02d}.{'png' if i % 2 else 'jpg'}" for cls in CLASSES for i in range(5)]
    expected = [files[i] for i in prepared["eval_index"].tolist()]
    assert prepared["eval_files"] == expected
    assert prepared["eval_labels"].tolist() == [CLASSES.index(f.split("/")[1]) for f in expected]
    images = prepared["eval_images"]
    assert images.dtype == torch.uint8 and images.shape == (6, 3, 16, 16)
    for row, name in enumerate(expected):
        np.testing.assert_array_equal(images[row].numpy(), reference_decode(folder / name, 16), err_msg=name)


def test_imagefolder_without_val_holds_out_test_fraction(folder):
    shutil.rmtree(folder / "val")
    prepared = prepare.prepare(_cfg(dataset="imagefolder", path=str(folder), eval_samples=100, test_fraction=0.2))
    train_index, test_index = common.split(15, 0.2, 0)
    assert torch.equal(prepared["train_index"], train_index) and torch.equal(prepared["test_index"], test_index)
    assert (prepared["train_count"], prepared["test_count"]) == (12, 3)
    assert torch.equal(prepared["eval_index"], torch.arange(12))  # the whole training split
    assert len(prepared["eval_files"]) == 12 and prepared["test_folder"] == "train"


def test_imagefolder_errors_name_the_folder(folder):
    with pytest.raises(DataError, match="has no 'train' folder"):
        prepare.prepare(_cfg(dataset="imagefolder", path=str(folder / "train")))
    (folder / "val" / "fox").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "val" / "fox" / "0.png")
    with pytest.raises(DataError, match=r"class folders of val/ \(4\) differ from those of train/ \(3\)"):
        prepare.prepare(_cfg(dataset="imagefolder", path=str(folder)))


def test_prepared_imagefolder_is_memory_mapped_and_normalised_on_the_device(folder, tmp_path):
    out = tmp_path / "prepared" / "imagefolder.pt"
    prepare.prepare_data(_cfg(dataset="imagefolder", path=str(folder), eval_samples=6), out)
    prepared = prepare.load_prepared(out)
    assert any(str(out) in line for line in Path("/proc/self/maps").read_text().splitlines())
    fresh = prepare.prepare(_cfg(dataset="imagefolder", path=str(folder), eval_samples=6))
    assert torch.equal(prepared["eval_images"], fresh["eval_images"])
    images, labels = prepare.eval_set(prepared, torch.device("cpu"))
    mean = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    expected = (fresh["eval_images"].numpy().astype(np.float64) / 255 - mean) / std
    assert images.dtype == torch.float32
    np.testing.assert_allclose(images.numpy(), expected, rtol=0, atol=1e-6)
    assert torch.equal(labels, fresh["eval_labels"])


def test_in_memory_eval_set_is_the_indexed_training_split():
    prepared = prepare.prepare(_cfg(eval_samples=10))
    images, labels = prepare.eval_set(prepared, "cpu")
    assert torch.equal(images, prepared["train_images"][prepared["eval_index"]])
    assert torch.equal(labels, prepared["train_labels"][prepared["eval_index"]])


@pytest.mark.parametrize("crop_scale, hflip", [([0.2, 1.0], 0.5), ([0.08, 1.0], 0.5), (None, 0.0), (None, 1.0)])
def test_training_transforms_give_normalised_crops_of_the_image_size(crop_scale, hflip):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 47, 3), dtype=np.uint8))
    x = imagefolder.train_transform(16, crop_scale, hflip)(image)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert -2.2 < x.min() and x.max() < 2.7  # (0 - mean) / std .. (1 - mean) / std
    assert imagefolder.eval_transform(224)(image).shape == (3, 224, 224)


def test_streamed_batches_are_seeded_and_independent_of_workers(folder):
    prepared = prepare.prepare(_cfg(dataset="imagefolder", path=str(folder), eval_samples=4))

    def first(seed, workers):
        batches = prepare.train_batches(prepared, {"crop_scale": [0.2, 1.0], "hflip": 0.5}, 4, seed, workers, "cpu")
        assert len(batches) == 3  # 15 images: three full batches, the last 3 dropped
        return next(iter(batches))

    images, labels = first(seed=1, workers=0)
    assert images.shape == (4, 3, 16, 16) and labels.dtype == torch.long
    torch.manual_seed(123)  # the global RNG plays no part
    for again in (first(seed=1, workers=0), first(seed=1, workers=2)):
        assert torch.equal(again[0], images) and torch.equal(again[1], labels)
    assert not torch.equal(first(seed=2, workers=0)[0], images)
    test = list(prepare.ordered_batches(prepared, "test", 4, 0, "cpu"))
    assert [len(y) for _, y in test] == [4, 2] and torch.cat([y for _, y in test]).tolist() == [0, 0, 1, 1, 2, 2]
