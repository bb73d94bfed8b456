"""Data sets: loaders, normalisation, splits and the evaluation subset."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from vitlandscape import data
from vitlandscape.data import DataError


def _cfg(**overrides):
    return {"dataset": "digits", "path": None, "image_size": 16, "eval_samples": 100, "seed": 0,
            "test_fraction": 0.2, **overrides}


def test_digits_are_upscaled_normalised_and_split():
    prepared = data.prepare(_cfg())
    train, test = prepared["train_images"], prepared["test_images"]
    assert train.shape == (1438, 3, 16, 16) and test.shape == (359, 3, 16, 16)
    assert prepared["num_classes"] == 10
    pixels = train * data.IMAGENET_STD + data.IMAGENET_MEAN  # back to [0, 1]
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2])  # grey repeated to 3 channels
    assert len(prepared["eval_index"]) == 100 and prepared["eval_index"].unique().numel() == 100


def test_eval_subset_is_seeded_and_whole_split_when_large():
    a, b = data.eval_indices(500, 50, seed=3), data.eval_indices(500, 50, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, data.eval_indices(500, 50, seed=4))
    assert torch.equal(data.eval_indices(40, 50, seed=3), torch.arange(40))
    assert torch.equal(data.eval_indices(40, 40, seed=3), torch.arange(40))


def test_npz_with_test_split_and_grey_images(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "grey.npz"
    np.savez(path, images=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), labels=np.arange(20) % 4,
             test_images=rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), test_labels=np.arange(6) % 4)
    prepared = data.prepare(_cfg(dataset="npz", path=str(path), eval_samples=8))
    assert prepared["train_images"].shape == (20, 3, 16, 16) and prepared["test_images"].shape == (6, 3, 16, 16)
    assert prepared["num_classes"] == 4


def test_npz_errors_name_the_problem(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, pictures=np.zeros((2, 8, 8), dtype=np.uint8), labels=np.zeros(2))
    with pytest.raises(DataError, match=r"has no 'images' array \(arrays: pictures, labels\)"):
        data.prepare(_cfg(dataset="npz", path=str(path)))
    with pytest.raises(DataError, match="data.path is required for dataset 'npz'"):
        data.prepare(_cfg(dataset="npz"))
    with pytest.raises(DataError, match="does not exist"):
        data.prepare(_cfg(dataset="npz", path=str(tmp_path / "absent.npz")))
    np.savez(path, images=np.zeros((3, 8, 8), dtype=np.uint8), labels=np.zeros(2))
    with pytest.raises(DataError, match="3 images but 2 labels"):
        data.prepare(_cfg(dataset="npz", path=str(path)))


def test_cifar_batches(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", 10), ("data_batch_2", 10), ("test_batch", 5)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(np.arange(n) % 10)}
        with open(tmp_path / name, "wb") as f:
            pickle.dump(batch, f)
    prepared = data.prepare(_cfg(dataset="cifar", path=str(tmp_path), image_size=32, eval_samples=4))
    assert prepared["train_images"].shape == (20, 3, 32, 32) and prepared["test_images"].shape == (5, 3, 32, 32)
    # channel-first bytes: the first 1024 values are the red plane
    with open(tmp_path / "data_batch_1", "rb") as f:
        first = pickle.load(f)[b"data"][0]
    red = torch.tensor(first[:1024].reshape(32, 32), dtype=torch.float32) / 255
    restored = prepared["train_images"][0, 0] * data.IMAGENET_STD[0, 0, 0, 0] + data.IMAGENET_MEAN[0, 0, 0, 0]
    torch.testing.assert_close(restored, red, rtol=0, atol=1e-5)


def test_imagefolder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 1)):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    prepared = data.prepare(_cfg(dataset="imagefolder", path=str(tmp_path), eval_samples=2))
    assert prepared["train_images"].shape == (6, 3, 16, 16) and prepared["test_images"].shape == (2, 3, 16, 16)
    assert prepared["train_labels"].tolist() == [0, 0, 0, 1, 1, 1] and prepared["num_classes"] == 2
    with pytest.raises(DataError, match="has no 'train' folder"):
        data.prepare(_cfg(dataset="imagefolder", path=str(tmp_path / "train")))
