"""Checkpoints: ours, the official MAE format, the RC-MAE release format, and bad ones."""
import argparse

import pytest
import torch

from vitlandscape import checkpoints, objectives, stages
from vitlandscape.checkpoints import CheckpointError
from vitlandscape.models.arch import build_mae
from conftest import model_settings


@pytest.fixture
def mae_state():
    torch.manual_seed(1)
    return build_mae(model_settings()["arch"]).state_dict()


def test_official_format_loads(tmp_path, mae_state):
    path = tmp_path / "mae_visualize_vit_tiny.pth"
    args = argparse.Namespace(model="mae_vit_tiny", norm_pix_loss=False, mask_ratio=0.75)
    torch.save({"model": mae_state, "optimizer": {}, "epoch": 399, "args": args}, path)
    model = objectives.load_mae(path, model_settings())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, mae_state[key])


def test_rcmae_release_format_loads_teacher_or_student(tmp_path, mae_state):
    student = {f"module.{k}": v + 1 for k, v in mae_state.items()}
    teacher = {f"module.{k}": v for k, v in mae_state.items()}
    path = tmp_path / "rc_mae.pth"
    torch.save({"student": student, "teacher": teacher, "epoch": 1}, path)
    loaded = objectives.load_mae(path, model_settings()).state_dict()
    torch.testing.assert_close(loaded["cls_token"], mae_state["cls_token"])
    loaded = objectives.load_mae(path, model_settings(downstream_weights="student")).state_dict()
    torch.testing.assert_close(loaded["cls_token"], mae_state["cls_token"] + 1)


def test_workflow_checkpoint_loads(tmp_path, npz_dataset):
    data_file = tmp_path / "data.pt"
    stages.prepare_data({"dataset": "npz", "path": str(npz_dataset), "image_size": 16,
                         "eval_samples": 32, "seed": 0, "test_fraction": 0.25}, data_file)
    for method in ("mae", "rcmae"):
        cfg = model_settings(method)
        ckpt = stages.pretrain(cfg, data_file, tmp_path / f"{method}.pt")
        model = objectives.load_mae(tmp_path / f"{method}.pt", cfg)
        torch.testing.assert_close(model.state_dict()["norm.weight"], ckpt["model"]["norm.weight"])
    ckpt = checkpoints.load(tmp_path / "rcmae.pt")
    torch.testing.assert_close(ckpt["model"]["blocks.0.attn.qkv.weight"],
                               ckpt["teacher"]["blocks.0.attn.qkv.weight"])
    assert not torch.equal(ckpt["student"]["blocks.0.attn.qkv.weight"],
                           ckpt["teacher"]["blocks.0.attn.qkv.weight"])


def test_missing_and_unexpected_keys_are_listed(tmp_path, mae_state):
    state = dict(mae_state)
    del state["decoder_pred.bias"]
    del state["blocks.1.mlp.fc2.weight"]
    state["head.weight"] = torch.zeros(3, 3)
    state["norm.weight"] = torch.zeros(7)
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as err:
        objectives.load_mae(path, model_settings())
    message = str(err.value)
    for fragment in ("broken.pth", "missing keys: blocks.1.mlp.fc2.weight, decoder_pred.bias",
                     "unexpected keys: head.weight", "norm.weight (7,) != (32,)"):
        assert fragment in message


def test_unreadable_and_wrong_layout_checkpoints(tmp_path):
    bad = tmp_path / "not_a_checkpoint.pth"
    bad.write_text("hello")
    with pytest.raises(CheckpointError, match="not_a_checkpoint.pth cannot be read"):
        checkpoints.load(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoints.load(tmp_path / "absent.pth")
    odd = tmp_path / "odd.pth"
    torch.save({"weights": {}}, odd)
    with pytest.raises(CheckpointError, match=r"no 'model' or 'teacher' entry \(top-level keys: weights\)"):
        objectives.load_mae(odd, model_settings())


def test_atomic_save_leaves_no_partial_file(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    target = tmp_path / "ckpt.pt"
    with pytest.raises(RuntimeError, match="boom"):
        checkpoints.atomic_save({"x": Unpicklable()}, target)
    assert list(tmp_path.iterdir()) == []
