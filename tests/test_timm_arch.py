"""Any timm ViT through `arch: {timm: NAME, img_size: N, ...}`: built as timm defines it
(layer scale, registers, patch 14), loaded from a state dict in timm's names with the position
embedding resampled to `img_size`, and checked against the config before any job.

The writers are timm's own models (`timm.create_model`), the reference forward is timm's own
model loaded with a position embedding the test resamples itself (plain bicubic interpolation
of the grid in float64), never the loader under test.
"""
import copy

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from conftest import model_settings, validated
from vitlandscape import configcheck
from vitlandscape.data import prepare
from vitlandscape.landscape import directions, objectives
from vitlandscape.models.arch import dimensions
from vitlandscape.train import stages

DINOV2 = "vit_small_patch14_reg4_dinov2"  # layer scale, 4 registers, no position embedding on them
SMALL = {"depth": 2, "embed_dim": 48, "num_heads": 2}  # timm keywords: a tiny model of that family
CLASSES = 5


def released(img_size: int, classes: int, seed: int = 0, **kwargs):
    """A timm model as its release holds it; layer-scale gammas, registers and the position
    embedding made random (unit scale) so that a loader that dropped, misplaced or resampled
    them otherwise would change the output."""
    torch.manual_seed(seed)
    model = timm.create_model(DINOV2, pretrained=False, img_size=img_size, num_classes=classes, **SMALL, **kwargs)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gamma" in name or name in ("reg_token", "cls_token", "pos_embed"):
                p.normal_()
    return model.eval()


def resampled(pos: torch.Tensor, old: int, new: int) -> torch.Tensor:
    """pos (1, old*old, D), no prefix tokens -> (1, new*new, D): bicubic, antialiased when
    shrinking (what timm's filter does), computed in float64."""
    grid = pos.double().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", antialias=True, align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new * new, -1).float()


def test_a_dinov2_style_vit_from_timm_names_is_resampled_and_computes_timms_forward(tmp_path, capsys):
    writer = released(img_size=56, classes=CLASSES)  # 4 x 4 patches of 14
    path = tmp_path / "model.safetensors"
    save_file(writer.state_dict(), path)
    arch = {"timm": DINOV2, "img_size": 28, **SMALL}  # 2 x 2 patches
    assert dimensions(arch) | {"timm": DINOV2} == {**arch, "patch_size": 14}
    model, ckpt = objectives.load("supervised", path, model_settings("supervised", arch=arch))
    assert ckpt.format == "timm_vit"
    assert "pos_embed resampled from (1, 16, 48) to (1, 4, 48)" in capsys.readouterr().out

    reference = timm.create_model(DINOV2, pretrained=False, img_size=28, num_classes=CLASSES, **SMALL).eval()
    state = writer.state_dict()
    state["pos_embed"] = resampled(state["pos_embed"], 4, 2)
    reference.load_state_dict(state, strict=True)
    images = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    # float32 (timm) against float64 (here) interpolation of unit-scale values: measured 1.2e-7
    # apart; bilinear instead of bicubic moves them by 0.1
    assert torch.allclose(model.pos_embed, state["pos_embed"], rtol=0, atol=1e-5)
    with torch.no_grad():
        ours, theirs = model(images), reference(images)
    # The same model and kernels; only the position embedding went through two interpolations
    # (timm's float32, the test's float64): logits measured 3e-8 apart (7e-9 on torch's default
    # kernels); 1e-5 is far below what a misplaced register or gamma changes (order 1).
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5), (ours - theirs).abs().max()
    for key in ("blocks.1.ls2.gamma", "reg_token", "cls_token", "blocks.0.attn.qkv.weight"):
        assert torch.equal(model.state_dict()[key], writer.state_dict()[key]), key  # stored values, bits


def test_the_probe_trains_on_a_headless_timm_encoder_and_keeps_it(tmp_path, npz_dataset):
    # patch_size 4 (a timm keyword) fits the 16-pixel test images; layer scale and registers stay
    writer = released(img_size=16, classes=0, patch_size=4)
    path = tmp_path / "backbone.pth"
    torch.save(writer.state_dict(), path)  # a bare state dict in timm's names, no head
    data_file = tmp_path / "data.pt"
    prepare.prepare_data({"dataset": "npz", "path": str(npz_dataset), "image_size": 16, "eval_samples": 8,
                          "seed": 0, "test_fraction": 0.25}, data_file)
    arch = {"timm": DINOV2, "img_size": 16, "patch_size": 4, **SMALL}
    cfg = model_settings(arch=arch, checkpoint=str(path), objectives=["probe"])
    cfg["probe"].update(epochs=1, batch_size=32, lr=1e-2, weight_decay=0.0, warmup_epochs=0)
    metrics = stages.downstream(cfg, "probe", data_file, path, out=tmp_path / "probe.pt",
                                metrics_out=tmp_path / "probe.json")
    assert 0.0 <= metrics["test_top1"] <= 1.0
    probe, ckpt = objectives.load("probe", tmp_path / "probe.pt", cfg)
    assert ckpt.format == "vitlandscape"
    encoder = writer.state_dict()
    trained = probe.state_dict()
    assert set(trained) - set(encoder) == {"head.0.running_mean", "head.0.running_var", "head.0.num_batches_tracked",
                                           "head.1.weight", "head.1.bias"}
    for key in encoder:  # the frozen encoder, layer scale, registers and position embedding included
        assert torch.equal(trained[key], encoder[key]), key


def test_a_supervised_timm_vit_trains_from_scratch_and_a_finetune_pools_through_fc_norm(tmp_path, data_file):
    arch = {"timm": DINOV2, "img_size": 16, "patch_size": 4, **SMALL}
    cfg = model_settings("supervised", arch=arch)
    cfg["pretrain"].update(epochs=1, batch_size=32)
    ckpt = stages.pretrain(cfg, data_file, tmp_path / "sup.pt")
    assert ckpt["arch"] == {**arch, "num_heads": 2} and "blocks.1.ls2.gamma" in ckpt["model"]
    model, loaded = objectives.load("supervised", tmp_path / "sup.pt", cfg)
    assert loaded.format == "vitlandscape" and model.num_reg_tokens == 4
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ckpt["model"].items())

    writer = released(img_size=16, classes=0, patch_size=4)
    torch.save(writer.state_dict(), tmp_path / "backbone.pth")
    mae_like = model_settings(arch=arch, checkpoint=str(tmp_path / "backbone.pth"), objectives=["finetune"])
    mae_like["finetune"].update(epochs=1, batch_size=32, global_pool=True)
    stages.downstream(mae_like, "finetune", data_file, tmp_path / "backbone.pth", out=tmp_path / "ft.pt",
                      metrics_out=tmp_path / "ft.json")
    tuned, _ = objectives.load("finetune", tmp_path / "ft.pt", mae_like)
    assert tuned.global_pool == "avg" and "fc_norm.weight" in tuned.state_dict()
    assert "norm.weight" not in tuned.state_dict()  # timm's pooled ViT: fc_norm replaces the final norm


def test_directions_move_a_timm_vits_tensors_by_the_same_rule(tmp_path):
    model = released(img_size=28, classes=CLASSES)
    names = set(directions.perturbed_names(model, perturb_1d=False, perturb_frozen=False))
    # registers, cls token and the learnt position embedding are trained tensors of >= 2 dims
    assert {"reg_token", "cls_token", "pos_embed", "blocks.0.attn.qkv.weight"} <= names
    # layer-scale gammas are 1-D: moved only when 1-D tensors are (landscape.perturb_1d)
    assert not any("gamma" in n for n in names)
    with_1d = set(directions.perturbed_names(model, perturb_1d=True, perturb_frozen=False))
    assert {"blocks.0.ls1.gamma", "blocks.1.ls2.gamma"} <= with_1d


def _config(default_config, arch, checkpoint=None, method="supervised"):
    config = default_config
    config["data"]["image_size"] = arch["img_size"]
    config["models"] = {"vit": {"method": method, "arch": arch, "checkpoint": checkpoint,
                                **({"objectives": ["probe"]} if method != "supervised" else {})}}
    for key in ("compare", "interactive", "reconstructions"):
        config["figures"].pop(key, None)
    config["metrics"]["claims"] = []
    config["landscape"]["interpolations"] = []
    config["trajectories"] = {}
    return validated(config)


def test_the_config_check_builds_timms_model_and_compares_shapes(tmp_path, default_config):
    arch = {"timm": DINOV2, "img_size": 28, **SMALL}
    path = tmp_path / "model.safetensors"
    save_file(released(img_size=56, classes=CLASSES).state_dict(), path)  # another img_size: resampled, fine
    assert configcheck.problems(_config(copy.deepcopy(default_config), arch, str(path))) == []

    wider = dict(arch, embed_dim=64)
    problems = configcheck.problems(_config(copy.deepcopy(default_config), wider, str(path)))
    assert problems == [f"models.vit.arch.embed_dim: 64 does not match checkpoint {path} (models.vit.checkpoint); "
                        f"expected 48, as in the checkpoint"]
    unknown = configcheck.problems(_config(copy.deepcopy(default_config), dict(arch, timm="vit_nonexistent")))
    assert unknown == ["models.vit.arch.timm: Unknown model (vit_nonexistent); see timm.list_models()"]
    hub = configcheck.problems(_config(copy.deepcopy(default_config), dict(arch, timm="hf-hub:timm/x")))
    assert len(hub) == 1 and "names a model source" in hub[0]
    pretraining = configcheck.problems(_config(copy.deepcopy(default_config), arch, method="mae"))
    assert len(pretraining) == 1 and pretraining[0].startswith(f"models.vit.arch.timm: {DINOV2} has no MAE decoder")


def test_a_timm_model_that_is_no_vision_transformer_is_refused(default_config):
    eva = configcheck.problems(_config(copy.deepcopy(default_config), {"timm": "eva02_tiny_patch14_224", "img_size": 28}))
    assert eva == ["models.vit.arch.timm: eva02_tiny_patch14_224 builds a Eva, not a timm VisionTransformer, "
                   "which is what this workflow measures"]
    resnet = configcheck.problems(_config(copy.deepcopy(default_config), {"timm": "resnet18", "img_size": 28}))
    assert len(resnet) == 1 and resnet[0].startswith("models.vit.arch: timm's resnet18 does not take these settings")
