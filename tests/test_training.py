"""Training stages: reproducible from their seed, and the pieces of the recipes."""

import pytest
import torch

from vitlandscape import stages, train
from vitlandscape.models.arch import build_mae
from conftest import model_settings


@pytest.fixture
def data_file(tmp_path, npz_dataset):
    path = tmp_path / "data.pt"
    stages.prepare_data({"dataset": "npz", "path": str(npz_dataset), "image_size": 16,
                         "eval_samples": 32, "seed": 0, "test_fraction": 0.25}, path)
    return path


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
        stages.downstream(cfg, stage, data_file, tmp_path / "pre.pt", tmp_path / f"{name}.pt",
                          tmp_path / f"{name}.json")
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True)["model"] for n in "ab")
    assert _same(a, b)
    encoder_changed = not torch.equal(a["blocks.0.attn.qkv.weight"], pretrained["model"]["blocks.0.attn.qkv.weight"])
    assert encoder_changed == (stage == "finetune")


def test_learning_rate_warms_up_then_decays_to_zero():
    lrs = [train.learning_rate(step, 100, 10, 1.0) for step in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] < 1e-3


def test_weight_decay_skips_1d_parameters():
    model = build_mae(model_settings()["arch"])
    decay, no_decay = train.adamw(model.parameters(), 0.05).param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert not any(p is model.pos_embed for p in decay["params"] + no_decay["params"])
