"""Training stages: reproducible from their seed, and the pieces of the recipes."""

import pytest
import torch

from conftest import make_image_folder, model_settings
from vitlandscape.data import prepare
from vitlandscape.models.arch import build_mae
from vitlandscape.train import optim, stages


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["mae", "rcmae", "supervised"])
def test_pretraining_is_reproducible(tmp_path, data_file, method):
    cfg = model_settings(method)
    first = stages.pretrain(cfg, data_file, tmp_path / "a.pt")
    second = stages.pretrain(cfg, data_file, tmp_path / "b.pt")
    assert _same(first["model"], second["model"])
    other = stages.pretrain(model_settings(method, seed=1), data_file, tmp_path / "c.pt")
    assert not _same(first["model"], other["model"])


@pytest.mark.parametrize("stage", ["probe", "finetune"])
def test_downstream_is_reproducible_and_probe_keeps_the_encoder(tmp_path, data_file, stage):
    cfg = model_settings("mae")
    pretrained = stages.pretrain(cfg, data_file, tmp_path / "pre.pt")
    for name in ("a", "b"):
        stages.downstream(cfg, stage, data_file, tmp_path / "pre.pt", out=tmp_path / f"{name}.pt",
                          metrics_out=tmp_path / f"{name}.json")
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True)["model"] for n in "ab")
    assert _same(a, b)
    encoder_changed = not torch.equal(a["blocks.0.attn.qkv.weight"], pretrained["model"]["blocks.0.attn.qkv.weight"])
    assert encoder_changed == (stage == "finetune")


@pytest.fixture
def folder_file(tmp_path):
    """A prepared fake ImageFolder: 3 classes, 12 training and 3 val images each."""
    root = make_image_folder(tmp_path / "folder", classes=3, train=12, val=3)
    path = tmp_path / "folder.pt"
    prepare.prepare_data({"dataset": "imagefolder", "path": str(root), "image_size": 16, "eval_samples": 8,
                          "seed": 0, "test_fraction": 0.2}, path)
    return path


def test_streamed_pretraining_is_reproducible_whatever_the_workers(tmp_path, folder_file):
    cfg = model_settings("mae", pretrain={"epochs": 1, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.05,
                                          "warmup_epochs": 0})
    first = stages.pretrain(cfg, folder_file, tmp_path / "a.pt", workers=0)
    again = stages.pretrain(cfg, folder_file, tmp_path / "b.pt", workers=2)
    assert _same(first["model"], again["model"]) and len(first["history"]) == 1


@pytest.mark.parametrize("features", ["streaming", "cached"])
def test_streamed_probe_trains_only_the_head(tmp_path, folder_file, features):
    cfg = model_settings("mae")
    cfg["probe"] = {**cfg["probe"], "features": features, "batch_size": 8}
    pretrained = stages.pretrain(cfg, folder_file, tmp_path / "pre.pt")
    metrics = stages.downstream(cfg, "probe", folder_file, tmp_path / "pre.pt", out=tmp_path / "probe.pt",
                                metrics_out=tmp_path / "probe.json", workers=1)
    probe = torch.load(tmp_path / "probe.pt", weights_only=True)
    for key, value in pretrained["model"].items():
        if key in probe["model"]:
            assert torch.equal(probe["model"][key], value), key
    assert len(probe["history"]) == 2 and metrics["train_top1_images"] == 8  # the eval subset
    assert 0 <= metrics["test_top1"] <= 1 and 0 <= metrics["random_init_test_top1"] <= 1


def test_cached_probe_features_are_the_streamed_ones_when_the_recipe_changes_no_image(tmp_path, folder_file,
                                                                                      data_file):
    cfg = model_settings("mae")
    heads = {}
    for name, path in (("folder", folder_file), ("npz", data_file)):
        stages.pretrain(cfg, path, tmp_path / f"{name}_mae.pt")
        for recipe in ("official", "plain"):
            for features in ("streaming", "cached"):
                changes = {"crop_scale": None, "hflip": 0.0} if recipe == "plain" else {}
                settings = {**cfg, "probe": {**cfg["probe"], "features": features, "recipe": changes}}
                stages.downstream(settings, "probe", path, tmp_path / f"{name}_mae.pt", out=tmp_path / "p.pt",
                                  metrics_out=tmp_path / "p.json")
                heads[name, recipe, features] = torch.load(tmp_path / "p.pt", weights_only=True)["model"]["head.1.weight"]
    for name in ("folder", "npz"):  # crop and flip (official): every step sees other features
        assert not torch.equal(heads[name, "official", "streaming"], heads[name, "official", "cached"])
    # in memory and no augmentation: one computation (a folder still crops the centre differently:
    # its streamed loader resizes each image, its cached features are those of the prepared subset)
    assert torch.equal(heads["npz", "plain", "streaming"], heads["npz", "plain", "cached"])


def test_mae_pretraining_groups_decay_every_trained_tensor_of_two_dimensions():
    model = build_mae(model_settings()["arch"])
    groups = optim.param_groups(model, 0.05)
    decay = [p for g in groups if g["weight_decay"] == 0.05 for p in g["params"]]
    no_decay = [p for g in groups if g["weight_decay"] == 0.0 for p in g["params"]]
    assert all(p.ndim >= 2 for p in decay) and all(p.ndim < 2 for p in no_decay)
    assert any(p is model.cls_token for p in decay) and any(p is model.mask_token for p in decay)
    assert not any(p is model.pos_embed for p in decay + no_decay)
