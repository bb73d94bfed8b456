"""Checkpoints: ours, the official MAE format, the RC-MAE release format, and bad ones."""
import argparse
import hashlib
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from conftest import model_settings
from vitlandscape.data import prepare
from vitlandscape.landscape import objectives
from vitlandscape.models.arch import build_mae
from vitlandscape.models.classifier import build_classifier
from vitlandscape.storage import checkpoints, outputs
from vitlandscape.storage.checkpoints import CheckpointError
from vitlandscape.train import stages


def load_mae(path, model_cfg: dict) -> torch.nn.Module:
    """An MAE with its decoder (official, RC-MAE release or ours), in eval mode."""
    return objectives.load("pretext", path, model_cfg)[0]


@pytest.fixture
def mae_state():
    torch.manual_seed(1)
    return build_mae(model_settings()["arch"]).state_dict()


def test_official_format_loads(tmp_path, mae_state):
    path = tmp_path / "mae_visualize_vit_tiny.pth"
    args = argparse.Namespace(model="mae_vit_tiny", norm_pix_loss=False, mask_ratio=0.75)
    torch.save({"model": mae_state, "optimizer": {}, "epoch": 399, "args": args}, path)
    model = load_mae(path, model_settings())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, mae_state[key])


def test_rcmae_release_format_loads_teacher_or_student(tmp_path, mae_state):
    student = {f"module.{k}": v + 1 for k, v in mae_state.items()}
    teacher = {f"module.{k}": v for k, v in mae_state.items()}
    path = tmp_path / "rc_mae.pth"
    torch.save({"student": student, "teacher": teacher, "epoch": 1}, path)
    loaded = load_mae(path, model_settings()).state_dict()
    torch.testing.assert_close(loaded["cls_token"], mae_state["cls_token"])
    loaded = load_mae(path, model_settings(downstream_weights="student")).state_dict()
    torch.testing.assert_close(loaded["cls_token"], mae_state["cls_token"] + 1)


def test_workflow_checkpoint_loads(tmp_path, npz_dataset):
    data_file = tmp_path / "data.pt"
    prepare.prepare_data({"dataset": "npz", "path": str(npz_dataset), "image_size": 16,
                          "eval_samples": 32, "seed": 0, "test_fraction": 0.25}, data_file)
    for method in ("mae", "rcmae"):
        cfg = model_settings(method)
        ckpt = stages.pretrain(cfg, data_file, tmp_path / f"{method}.pt")
        model = load_mae(tmp_path / f"{method}.pt", cfg)
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
    state["fc_norm.weight"] = torch.zeros(3)
    state["norm.weight"] = torch.zeros(7)
    state["cls_token"] = torch.zeros(1, 2, 32)
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as err:
        load_mae(path, model_settings())
    assert str(err.value) == (
        f"checkpoint {path} (mae_pretrain format, torch file) does not match the model: missing keys: blocks.1.mlp.fc2.weight, decoder_pred.bias"
        " | unexpected keys: fc_norm.weight, head.weight"
        " | shape mismatches: cls_token (1, 2, 32) != (1, 1, 32); norm.weight (7,) != (32,)")


class RunsCode:
    """Unpickling this calls `touch` on a file: what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_does_not_run(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"model": {}, "payload": RunsCode(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="evil.pth cannot be read"):
        checkpoints.load(tmp_path / "evil.pth")
    assert not marker.exists()


def test_unreadable_and_wrong_layout_checkpoints(tmp_path):
    bad = tmp_path / "not_a_checkpoint.pth"
    bad.write_text("hello")
    with pytest.raises(CheckpointError, match="not_a_checkpoint.pth cannot be read"):
        checkpoints.load(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoints.load(tmp_path / "absent.pth")
    odd = tmp_path / "odd.pth"
    torch.save({"weights": {}, "epoch": 3}, odd)
    with pytest.raises(CheckpointError, match=r"in no supported format \(top-level keys: weights, epoch; "
                                              r"parameter names: none\)\. Supported: vitlandscape, mae_pretrain"):
        load_mae(odd, model_settings())


def test_atomic_save_leaves_no_partial_file(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    target = tmp_path / "ckpt.pt"
    with pytest.raises(RuntimeError, match="boom"):
        checkpoints.atomic_save({"x": Unpicklable()}, target)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def probe_checkpoint(tmp_path):
    torch.manual_seed(2)
    arch = {k: v for k, v in model_settings()["arch"].items() if not k.startswith("decoder")}
    model = build_classifier(arch, 3, "probe")
    path = tmp_path / "probe.pt"
    ckpt = {"kind": "classifier", "head": "probe", "arch": arch, "num_classes": 3, "model": model.state_dict()}
    torch.save(ckpt, path)
    return path, ckpt


def test_classifier_checkpoint_loads_exactly(probe_checkpoint):
    path, ckpt = probe_checkpoint
    model = objectives.load_model("probe", path, model_settings())
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["model"][key]), key


@pytest.mark.parametrize("change,fragment", [
    (lambda s: s.pop("head.1.bias"), "missing keys: head.1.bias"),
    (lambda s: s.update({"fc_norm.weight": torch.ones(32)}), "unexpected keys: fc_norm.weight"),
    (lambda s: s.update({"head.1.weight": torch.zeros(4, 32)}), "head.1.weight (4, 32) != (3, 32)"),
])
def test_classifier_checkpoint_keys_must_match(tmp_path, probe_checkpoint, change, fragment):
    path, ckpt = probe_checkpoint
    change(ckpt["model"])
    torch.save(ckpt, tmp_path / "changed.pt")
    with pytest.raises(CheckpointError) as err:
        objectives.load_model("probe", tmp_path / "changed.pt", model_settings())
    assert "changed.pt (vitlandscape format, torch file) does not match the model" in str(err.value)
    assert fragment in str(err.value)


def test_an_mae_checkpoint_is_not_a_classifier(tmp_path, mae_state):
    torch.save({"model": mae_state, "kind": "mae"}, tmp_path / "mae.pt")
    with pytest.raises(CheckpointError, match="mae.pt is a vitlandscape mae checkpoint, which cannot serve the "
                                              "probe objective"):
        objectives.load_model("probe", tmp_path / "mae.pt", model_settings())


def test_non_dict_checkpoint_and_module_prefix(tmp_path, mae_state):
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list.pt holds a list, expected a dict"):
        checkpoints.load(tmp_path / "list.pt")
    prefixed = {f"module.{k}": v for k, v in mae_state.items()}
    torch.save({"model": prefixed}, tmp_path / "ddp.pth")
    loaded = load_mae(tmp_path / "ddp.pth", model_settings()).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in mae_state.items())


def test_sha256_of_a_file(tmp_path):
    path = tmp_path / "blob"
    payload = bytes(range(256)) * 5000  # more than one read block
    path.write_bytes(payload)
    assert outputs.sha256(path) == hashlib.sha256(payload).hexdigest()


def test_atomic_save_writes_beside_the_target_in_new_folders(tmp_path, monkeypatch):
    """The temporary file lives in the target's folder (a rename across file systems is not atomic)."""
    written = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, path: written.append(Path(path)) or real_save(obj, path))
    target = tmp_path / "new" / "deeper" / "ckpt.pt"
    checkpoints.atomic_save({"x": torch.ones(2)}, target)
    assert written[0].parent == target.parent and written[0].name.startswith(".ckpt.pt.")
    assert torch.equal(torch.load(target, weights_only=True)["x"], torch.ones(2))
    assert sorted(p.name for p in target.parent.iterdir()) == ["ckpt.pt"]


def test_objects_beyond_weights_are_refused_with_the_way_out_unless_trusted(tmp_path, mae_state):
    """A Fraction is harmless but outside what weights-only loading allows: refused, naming the
    type and `trust_checkpoint`; a trusted load reads it. The official releases' argparse
    Namespace stays allowed without trust."""
    path = tmp_path / "with_fraction.pth"
    torch.save({"model": mae_state, "note": Fraction(1, 3)}, path)
    with pytest.raises(CheckpointError, match=r"with_fraction.pth cannot be read: it holds fractions.Fraction, "
                                              r".*set trust_checkpoint: true on the model"):
        checkpoints.load(path)
    assert checkpoints.load(path, trusted=True)["note"] == Fraction(1, 3)
    with pytest.raises(CheckpointError, match="trust_checkpoint"):
        load_mae(path, model_settings())
    model = load_mae(path, model_settings(trust_checkpoint=True))
    assert torch.equal(model.state_dict()["decoder_pred.weight"], mae_state["decoder_pred.weight"])
    torch.save({"model": mae_state, "args": argparse.Namespace(norm_pix_loss=False)}, tmp_path / "official.pth")
    assert checkpoints.load(tmp_path / "official.pth")["args"].norm_pix_loss is False
