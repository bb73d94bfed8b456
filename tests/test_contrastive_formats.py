"""The released layouts of DINO and MoCo v3, built at tiny size with timm's own classes and the
key names their training code writes (facebookresearch/dino main_dino.py, facebookresearch/
moco-v3 main_moco.py and main_lincls.py): recognised, the weights `downstream_weights` names
picked, served to probing and fine-tuning, and a linear probe's logits equal to its writer's.
"""
import argparse
from functools import partial

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from conftest import TINY_ARCH, model_settings
from vitlandscape.landscape import directions, objectives
from vitlandscape.models.posembed import sincos_2d
from vitlandscape.storage import checkpoint_header, checkpoints, formats
from vitlandscape.storage.checkpoints import CheckpointError
from vitlandscape.train import stages

DIMS = {k: TINY_ARCH[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads")}
IMAGES = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def vit(seed: int, classes=0, fixed_pos=False) -> VisionTransformer:
    """The ViT the release's code builds: timm's class, qkv bias, LayerNorm eps 1e-6; MoCo v3's
    with a fixed 2-D sin-cos position embedding (zero cls slot, saved in the state dict)."""
    torch.manual_seed(seed)
    model = VisionTransformer(**DIMS, num_classes=classes, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    if fixed_pos:
        grid = DIMS["img_size"] // DIMS["patch_size"]
        model.pos_embed = nn.Parameter(torch.from_numpy(sincos_2d(DIMS["embed_dim"], grid)).float().unsqueeze(0),
                                       requires_grad=False)
    return model


def mlp(dims: list[int], last_bn: bool) -> nn.Sequential:
    """MoCo v3's projector (last_bn) / predictor: Linear (no bias), BN, ReLU, ..., the last Linear
    followed by a BN without affine in the projector only."""
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b, bias=False))
        if i < len(dims) - 2:
            layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*layers)


def mocov3_pretrain_checkpoint() -> tuple[dict, dict, dict]:
    """({'state_dict': module.base_encoder.*, ...}, the base encoder's state, the momentum one's)."""
    d = DIMS["embed_dim"]
    encoders = {}
    for role, seed in (("base_encoder", 1), ("momentum_encoder", 2)):
        model = vit(seed, fixed_pos=True)
        model.head = mlp([d, 64, 64, 16], last_bn=True)  # head.0 .. head.7, the projector
        encoders[role] = model.state_dict()
    predictor = mlp([16, 64, 16], last_bn=False)
    state = {f"module.{role}.{k}": v for role, s in encoders.items() for k, v in s.items()}
    state |= {f"module.predictor.{k}": v for k, v in predictor.state_dict().items()}
    assert {"module.base_encoder.head.0.weight", "module.base_encoder.head.7.running_mean",
            "module.predictor.1.running_var", "module.predictor.3.weight"} <= set(state)
    ckpt = {"epoch": 300, "arch": "vit_small", "state_dict": state, "optimizer": {"state": {}, "param_groups": []},
            "scaler": {}}
    return ckpt, encoders["base_encoder"], encoders["momentum_encoder"]


def dino_full_checkpoint() -> tuple[dict, dict, dict]:
    """({'student': module.backbone.*, 'teacher': backbone.*, ...}, student backbone, teacher backbone)."""
    student, teacher = vit(3).state_dict(), vit(4).state_dict()
    head = {"mlp.0.weight": torch.randn(32, DIMS["embed_dim"]), "mlp.0.bias": torch.zeros(32),
            "last_layer.weight_g": torch.ones(64, 1), "last_layer.weight_v": torch.randn(64, 32)}
    ckpt = {"student": {f"module.backbone.{k}": v for k, v in student.items()} | {f"module.head.{k}": v for k, v in head.items()},
            "teacher": {f"backbone.{k}": v for k, v in teacher.items()} | {f"head.{k}": v for k, v in head.items()},
            "optimizer": {"state": {}, "param_groups": []}, "epoch": 100, "args": argparse.Namespace(arch="vit_small"),
            "dino_loss": {"center": torch.zeros(1, 64)}}
    return ckpt, student, teacher


def encoder_of(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("prefer, role", [("base", "base_encoder"), ("student", "base_encoder"),
                                          ("momentum", "momentum_encoder"), ("teacher", "momentum_encoder")])
def test_mocov3_pretraining_checkpoint_gives_the_encoder_its_weights_name(tmp_path, prefer, role):
    ckpt, base, momentum = mocov3_pretrain_checkpoint()
    torch.save(ckpt, tmp_path / "checkpoint_0299.pth.tar")
    found = formats.read(tmp_path / "checkpoint_0299.pth.tar", prefer=prefer)
    assert (found.format, found.meta["weights"]) == ("mocov3_pretrain", role)
    assert same(formats.encoder_source(found), encoder_of(base if role == "base_encoder" else momentum))
    header = checkpoint_header.read(tmp_path / "checkpoint_0299.pth.tar", prefer=prefer)  # the config check's view
    assert header.format == "mocov3_pretrain" and set(header.state) == set(found.state)


def test_a_mocov3_encoder_is_probed_and_kept(tmp_path, data_file):
    ckpt, base, _ = mocov3_pretrain_checkpoint()
    path = tmp_path / "mocov3.pth.tar"
    torch.save(ckpt, path)
    cfg = model_settings(arch=DIMS | {k: TINY_ARCH[k] for k in TINY_ARCH if k.startswith("decoder")},
                         checkpoint=str(path), objectives=["probe"], downstream_weights="base")
    cfg["probe"].update(epochs=1, batch_size=32, warmup_epochs=0)
    metrics = stages.downstream(cfg, "probe", data_file, path, out=tmp_path / "probe.pt", metrics_out=tmp_path / "p.json")
    assert metrics["checkpoint_format"] == "mocov3_pretrain"
    probe, _ = objectives.load("probe", tmp_path / "probe.pt", cfg)
    assert same(encoder_of(probe.state_dict()), encoder_of(base))


def test_mocov3_linear_probe_serves_the_probe_objective_with_its_writers_logits(tmp_path):
    writer = vit(5, classes=7, fixed_pos=True).eval()
    state = {f"module.{k}": v for k, v in writer.state_dict().items()}
    path = tmp_path / "linear-vit-s-300ep.pth.tar"
    torch.save({"epoch": 90, "arch": "vit_small", "state_dict": state, "best_acc1": 73.2, "optimizer": {}}, path)
    model, ckpt = objectives.load("probe", path, model_settings())
    assert ckpt.format == "mocov3_linprobe"
    with torch.no_grad():  # the same weights and kernels in one process: bits
        torch.testing.assert_close(model(IMAGES), writer(IMAGES), rtol=0, atol=0)
    moved = directions.perturbed_names(model, perturb_1d=False, perturb_frozen=False)
    assert "pos_embed" not in moved and "head.weight" in moved  # MoCo v3's position embedding is fixed


def test_a_dino_backbone_file_is_recognised_and_probed(tmp_path, data_file):
    backbone = vit(6).state_dict()  # DINO's learnt position embedding, no head
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(backbone, path)
    assert formats.read(path).format == "backbone"
    save_file(backbone, tmp_path / "model.safetensors")  # timm's headless models on the hub
    assert formats.read(tmp_path / "model.safetensors").format == "backbone"
    torch.save({"model": backbone}, tmp_path / "mae_pretrain_vit_tiny.pth")  # MAE's encoder files wrap it
    assert formats.read(tmp_path / "mae_pretrain_vit_tiny.pth").format == "mae_encoder"
    cfg = model_settings(checkpoint=str(path), objectives=["probe"])
    cfg["probe"].update(epochs=1, batch_size=32, warmup_epochs=0)
    metrics = stages.downstream(cfg, "probe", data_file, path, out=tmp_path / "probe.pt", metrics_out=tmp_path / "p.json")
    assert metrics["checkpoint_format"] == "backbone"
    probe, _ = objectives.load("probe", tmp_path / "probe.pt", cfg)
    assert same(encoder_of(probe.state_dict()), backbone)


@pytest.mark.parametrize("prefer, which", [("teacher", "teacher"), ("momentum", "teacher"), ("student", "student")])
def test_a_dino_training_checkpoint_gives_its_teacher_or_student_backbone(tmp_path, prefer, which):
    ckpt, student, teacher = dino_full_checkpoint()
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    found = formats.read(tmp_path / "checkpoint.pth", prefer=prefer)
    assert (found.format, found.meta["weights"]) == ("dino_full", which)
    assert same(formats.encoder_source(found), student if which == "student" else teacher)  # the DINO head left out
    with pytest.raises(CheckpointError, match=r"is a dino_full checkpoint, which cannot serve the probe objective "
                                              r".*; it is a pretrained encoder: give it as the model's `checkpoint`"):
        formats.require(found, "probe")  # a backbone, not a probe


def test_a_mocov3_file_without_a_vit_names_what_it_found(tmp_path):
    state = {"module.base_encoder.conv1.weight": torch.zeros(8, 3, 7, 7), "module.base_encoder.fc.0.weight": torch.zeros(4, 8)}
    torch.save({"state_dict": state, "epoch": 1}, tmp_path / "resnet_moco.pth.tar")
    with pytest.raises(CheckpointError, match=r"resnet_moco.pth.tar is in no supported format \(top-level keys: "
                                              r"state_dict, epoch; parameter names: base_encoder.conv1.weight"):
        formats.read(tmp_path / "resnet_moco.pth.tar")


def test_full_size_releases_pass_the_strict_key_check():
    """ViT-B/16 layouts on the meta device: the names and shapes of the real files."""
    base = {"img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12}
    with torch.device("meta"):
        model = VisionTransformer(**base, num_classes=0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
        encoder = model.state_dict()
    moco = {"state_dict": {f"module.{r}.{k}": v for r in ("base_encoder", "momentum_encoder") for k, v in encoder.items()}}
    dino = {"student": {f"module.backbone.{k}": v for k, v in encoder.items()},
            "teacher": {f"backbone.{k}": v for k, v in encoder.items()}}
    from vitlandscape.models.classifier import build_classifier, encoder_weights
    for ckpt, fmt in ((moco, "mocov3_pretrain"), (dino, "dino_full"), (encoder, "backbone")):
        found = formats.recognise(ckpt, f"{fmt}.pth")
        assert found.format == fmt
        with torch.device("meta"):
            checkpoints.check_keys(*encoder_weights(build_classifier("vit_base_patch16", 1000, "probe"),
                                                    formats.encoder_source(found)), what=fmt)
