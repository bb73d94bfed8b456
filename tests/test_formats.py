"""Checkpoint formats: each released layout, built with its real key names, is recognised,
loads into the objectives it serves and computes what the model that wrote it computes.

The released layouts are made here with timm's own VisionTransformer (the class the
official MAE fine-tuning, linear-probe and DeiT code build on), not with our builders.
"""
import argparse
from fractions import Fraction
from functools import partial

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from conftest import TINY_ARCH, model_settings, validated
from vitlandscape import configcheck
from vitlandscape.data import prepare
from vitlandscape.landscape import objectives
from vitlandscape.metrics import accuracy
from vitlandscape.models.arch import build_mae
from vitlandscape.models.classifier import encoder_state
from vitlandscape.storage import checkpoints, formats
from vitlandscape.storage.checkpoints import CheckpointError
from vitlandscape.train import stages

CLASSES = 5
IMAGES = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def timm_vit(pool: str, dims=TINY_ARCH, classes=CLASSES, device=None) -> VisionTransformer:
    """A ViT as the released code builds it: timm's class, qkv bias, LayerNorm eps 1e-6."""
    torch.manual_seed(3)
    return VisionTransformer(img_size=dims["img_size"], patch_size=dims["patch_size"],
                             embed_dim=dims["embed_dim"], depth=dims["depth"], num_heads=dims["num_heads"],
                             num_classes=classes, qkv_bias=True, global_pool=pool,
                             norm_layer=partial(nn.LayerNorm, eps=1e-6), device=device)


def linprobe_vit(dims=TINY_ARCH, classes=CLASSES, device=None) -> VisionTransformer:
    """The official linear probe: cls token, head = BatchNorm1d(affine=False) + Linear."""
    model = timm_vit("token", dims, classes, device)
    model.head = nn.Sequential(nn.BatchNorm1d(dims["embed_dim"], affine=False, eps=1e-6, device=device),
                               model.head)
    if device != "meta":
        model.head[0].running_mean.normal_()
        model.head[0].running_var.uniform_(0.5, 2.0)
    return model


def source_models():
    """format -> (the model that writes it, the objective it serves, how it is saved)."""
    return {
        "mae_finetuned": (timm_vit("avg"), "finetune", lambda s: {"model": s, "epoch": 99}),
        "mae_linprobe": (linprobe_vit(), "probe", lambda s: {"model": s, "epoch": 89}),
        "timm_vit": (timm_vit("token"), "supervised", lambda s: {"model": s}),  # DeiT release
    }


@pytest.mark.parametrize("fmt", ["mae_finetuned", "mae_linprobe", "timm_vit"])
@pytest.mark.parametrize("container", ["torch", "safetensors"])
def test_released_classifier_loads_and_computes_the_same_logits(tmp_path, fmt, container):
    source, objective, wrap = source_models()[fmt]
    source.eval()
    state = source.state_dict()
    if container == "torch":
        path = tmp_path / "released.pth"
        torch.save(wrap(state), path)
    else:  # a flat state dict, as timm's model.safetensors
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    model, ckpt = objectives.load(objective, path, model_settings())
    assert (ckpt.format, ckpt.container) == (fmt, container)
    with torch.no_grad():
        torch.testing.assert_close(model(IMAGES), source(IMAGES), rtol=0, atol=0)


def test_bare_timm_state_dict_and_ddp_prefix(tmp_path):
    source = timm_vit("token").eval()
    torch.save(source.state_dict(), tmp_path / "bare.pth")
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "ddp.pth")
    for name in ("bare.pth", "ddp.pth"):
        model, ckpt = objectives.load("supervised", tmp_path / name, model_settings("supervised"))
        assert ckpt.format == "timm_vit"
        with torch.no_grad():
            torch.testing.assert_close(model(IMAGES), source(IMAGES), rtol=0, atol=0)


def test_rcmae_finetuned_checkpoint_serves_finetune(tmp_path):
    """RC-MAE fine-tunes with MAE's recipe: the same layout, saved from DDP."""
    source = timm_vit("avg").eval()
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "rc_ft.pth")
    model, ckpt = objectives.load("finetune", tmp_path / "rc_ft.pth", model_settings("rcmae"))
    assert ckpt.format == "mae_finetuned"
    with torch.no_grad():
        torch.testing.assert_close(model(IMAGES), source(IMAGES), rtol=0, atol=0)


def test_mae_pretrain_safetensors_serves_the_pretext_loss(tmp_path):
    state = build_mae(TINY_ARCH).state_dict()
    save_file(state, tmp_path / "mae.safetensors")
    model, ckpt = objectives.load("pretext", tmp_path / "mae.safetensors", model_settings())
    assert (ckpt.format, ckpt.container) == ("mae_pretrain", "safetensors")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_encoder_only_mae_is_refused_for_pretext_and_serves_probing(tmp_path, npz_dataset):
    torch.manual_seed(4)
    encoder = encoder_state(build_mae(TINY_ARCH).state_dict())
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": encoder, "args": argparse.Namespace(norm_pix_loss=True)}, path)
    assert formats.read(path).format == "mae_encoder"
    with pytest.raises(CheckpointError, match=r"MAE encoder without its decoder \(mae_encoder\): the pretext "
                                              r"loss needs the decoder\. Use mae_visualize_vit_\{base,large,huge\}"):
        objectives.load("pretext", path, model_settings())
    data_file = tmp_path / "data.pt"
    prepare.prepare_data({"dataset": "npz", "path": str(npz_dataset), "image_size": 16, "eval_samples": 8,
                          "seed": 0, "test_fraction": 0.25}, data_file)
    cfg = model_settings()
    cfg["probe"].update(epochs=1, batch_size=32, lr=1e-3, weight_decay=0.0, warmup_epochs=0)
    metrics = stages.downstream(cfg, "probe", data_file, path, out=tmp_path / "probe.pt",
                                metrics_out=tmp_path / "probe.json")
    assert metrics["checkpoint_format"] == "mae_encoder"
    probe, _ = objectives.load("probe", tmp_path / "probe.pt", cfg)
    for key in ("blocks.1.mlp.fc2.weight", "norm.weight", "pos_embed"):
        assert torch.equal(probe.state_dict()[key], encoder[key]), key


def test_finetune_recipe_writes_the_official_layout(tmp_path, npz_dataset):
    """Fine-tuning with global_pool writes what the released fine-tuned checkpoints hold:
    `fc_norm` instead of `norm`, a trained position embedding started from sin-cos."""
    data_file = tmp_path / "data.pt"
    prepare.prepare_data({"dataset": "npz", "path": str(npz_dataset), "image_size": 16, "eval_samples": 8,
                          "seed": 0, "test_fraction": 0.25}, data_file)
    mae = build_mae(TINY_ARCH).state_dict()
    torch.save({"model": mae}, tmp_path / "mae.pth")
    cfg = model_settings()
    cfg["finetune"].update(epochs=1, batch_size=32, lr=1e-3, weight_decay=0.0, warmup_epochs=0)
    assert cfg["finetune"]["global_pool"] is True  # the default: the official recipe
    stages.downstream(cfg, "finetune", data_file, tmp_path / "mae.pth", out=tmp_path / "ft.pt",
                      metrics_out=tmp_path / "ft.json")
    ours = checkpoints.load(tmp_path / "ft.pt")
    assert ours["global_pool"] is True
    official = timm_vit("avg", classes=ours["num_classes"]).state_dict()
    assert {k: v.shape for k, v in ours["model"].items()} == {k: v.shape for k, v in official.items()}
    assert not torch.equal(ours["model"]["pos_embed"], mae["pos_embed"])  # it trained
    # ... and it loads as a released fine-tuned checkpoint would
    torch.save({"model": ours["model"]}, tmp_path / "as_released.pth")
    assert objectives.load("finetune", tmp_path / "as_released.pth", cfg)[1].format == "mae_finetuned"


@pytest.mark.parametrize("objective,fmt", [("pretext", "timm_vit"), ("probe", "mae_finetuned"),
                                           ("supervised", "mae_linprobe")])
def test_a_format_that_cannot_serve_the_objective_is_refused(tmp_path, objective, fmt):
    source, _, wrap = source_models()[fmt]
    torch.save(wrap(source.state_dict()), tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match=f"is a {fmt} checkpoint, which cannot serve the {objective} objective"):
        objectives.load(objective, tmp_path / "c.pth", model_settings())


def test_unsupported_file_names_what_it_found(tmp_path):
    state = {"stem.conv.weight": torch.zeros(8, 3, 3, 3), "layer1.0.bn.weight": torch.zeros(8)}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match=r"resnet.pth is in no supported format \(top-level keys: state_dict, "
                                              r"epoch; parameter names: stem.conv.weight, layer1.0.bn.weight\)\. "
                                              r"Supported: vitlandscape, mae_pretrain, rcmae_release, mae_encoder.*"
                                              r"mocov3_pretrain, mocov3_linprobe"):
        formats.read(tmp_path / "resnet.pth")
    save_file(state, tmp_path / "resnet.safetensors")
    with pytest.raises(CheckpointError, match=r"parameter names: layer1.0.bn.weight, stem.conv.weight\)"):
        formats.read(tmp_path / "resnet.safetensors")


# ---- full size: ViT-B/16 key layouts, shapes only (meta tensors, no forward pass) ----

def official_mae_base(decoder: bool) -> dict:
    """The official MAE ViT-B/16 state dict's names and shapes, written out by hand."""
    d, dd, hidden, dhidden, length = 768, 512, 3072, 2048, 197

    def block(prefix, width, mlp):
        shapes = {"norm1.weight": (width,), "norm1.bias": (width,), "attn.qkv.weight": (3 * width, width),
                  "attn.qkv.bias": (3 * width,), "attn.proj.weight": (width, width), "attn.proj.bias": (width,),
                  "norm2.weight": (width,), "norm2.bias": (width,), "mlp.fc1.weight": (mlp, width),
                  "mlp.fc1.bias": (mlp,), "mlp.fc2.weight": (width, mlp), "mlp.fc2.bias": (width,)}
        return {f"{prefix}.{k}": v for k, v in shapes.items()}

    shapes = {"cls_token": (1, 1, d), "pos_embed": (1, length, d), "patch_embed.proj.weight": (d, 3, 16, 16),
              "patch_embed.proj.bias": (d,), "norm.weight": (d,), "norm.bias": (d,)}
    for i in range(12):
        shapes.update(block(f"blocks.{i}", d, hidden))
    if decoder:
        shapes.update({"mask_token": (1, 1, dd), "decoder_pos_embed": (1, length, dd),
                       "decoder_embed.weight": (dd, d), "decoder_embed.bias": (dd,),
                       "decoder_norm.weight": (dd,), "decoder_norm.bias": (dd,),
                       "decoder_pred.weight": (768, dd), "decoder_pred.bias": (768,)})
        for i in range(8):
            shapes.update(block(f"decoder_blocks.{i}", dd, dhidden))
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


BASE = {"img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12}


def full_size_layouts() -> dict:
    with torch.device("meta"):
        return {
            "mae_pretrain": ({"model": official_mae_base(decoder=True)}, "pretext", "mae_vit_base_patch16"),
            "rcmae_release": ({"student": {f"module.{k}": v for k, v in official_mae_base(True).items()},
                               "teacher": {f"module.{k}": v for k, v in official_mae_base(True).items()}},
                              "pretext", "mae_vit_base_patch16"),
            "mae_encoder": ({"model": official_mae_base(decoder=False)}, None, "mae_vit_base_patch16"),
            "mae_finetuned": ({"model": timm_vit("avg", BASE, 1000, "meta").state_dict()}, "finetune",
                              "mae_vit_base_patch16"),
            "mae_linprobe": ({"model": linprobe_vit(BASE, 1000, "meta").state_dict()}, "probe",
                             "mae_vit_base_patch16"),
            "timm_vit": (timm_vit("token", BASE, 1000, "meta").state_dict(), "supervised", "vit_base_patch16"),
        }


@pytest.mark.parametrize("fmt", ["mae_pretrain", "rcmae_release", "mae_encoder", "mae_finetuned", "mae_linprobe",
                                 "timm_vit"])
def test_full_size_vit_base_layouts_pass_the_strict_key_check(fmt):
    ckpt_dict, objective, arch = full_size_layouts()[fmt]
    ckpt = formats.recognise(ckpt_dict, f"{fmt}.pth")
    assert ckpt.format == fmt
    cfg = model_settings(arch=arch)
    with torch.device("meta"):
        if objective is None:  # the encoder that probing and fine-tuning start from
            from vitlandscape.models.classifier import build_classifier
            target = build_classifier(arch, 1000, "probe")
            expected = {k: v for k, v in target.state_dict().items() if not k.startswith("head")}
            checkpoints.check_keys(expected, formats.encoder_source(ckpt), what=fmt)
        else:
            model = objectives.model_for(ckpt, objective, cfg)
            checkpoints.check_keys(model.state_dict(), ckpt.state, what=fmt)
    if fmt == "mae_finetuned":  # and a ViT-L checkpoint is not taken for a ViT-B
        with torch.device("meta"), pytest.raises(CheckpointError, match="shape mismatches: blocks.0.attn"):
            checkpoints.check_keys(objectives.model_for(ckpt, objective, model_settings(arch="mae_vit_large_patch16"))
                                   .state_dict(), ckpt.state, what=fmt)


# ---- before any job runs ----

def test_config_check_refuses_an_encoder_only_checkpoint_for_pretext(tmp_path, default_config):
    config = default_config
    arch = config["models"]["mae"]["arch"]
    torch.save({"model": encoder_state(build_mae(arch).state_dict())}, tmp_path / "enc.pth")
    torch.save({"model": build_mae(arch).state_dict(), "args": argparse.Namespace(norm_pix_loss=True)},
               tmp_path / "full.pth")
    config["models"]["mae"]["checkpoint"] = str(tmp_path / "enc.pth")
    config["trajectories"] = {}  # a given checkpoint has no training to replay
    problems = configcheck.problems(validated(config))
    assert len(problems) == 1 and problems[0].startswith("models.mae.checkpoint: checkpoint ")
    assert "the pretext loss needs the decoder" in problems[0]
    # without the pretext objective the same file is fine: it is probed and fine-tuned
    config["models"]["mae"]["objectives"] = ["probe"]
    config["figures"]["compare"] = [c for c in config["figures"]["compare"] if "mae/pretext" not in c["surfaces"]]
    config["metrics"]["claims"] = [c for c in config["metrics"]["claims"] if "mae/pretext" not in (c["wider"], c["than"])]
    config["landscape"]["interpolations"] = []
    assert configcheck.problems(validated(config)) == []
    # a decoder trained on norm-pix targets measured with pixel targets
    config["models"]["mae"].update(objectives=["pretext", "probe"], checkpoint=str(tmp_path / "full.pth"))
    config["figures"]["compare"] = []
    assert configcheck.problems(validated(config)) == [
        f"models.mae.norm_pix_loss is False but checkpoint {tmp_path / 'full.pth'} was trained with "
        "norm_pix_loss=True: the pretext loss would not be the one it minimised"]


def test_config_check_refuses_a_probe_checkpoint_of_the_wrong_kind(tmp_path, default_config):
    source = timm_vit("avg")
    torch.save({"model": source.state_dict()}, tmp_path / "ft.pth")
    config = default_config
    config["models"]["mae"]["probe"]["checkpoint"] = str(tmp_path / "ft.pth")
    config["models"]["mae"]["finetune"]["checkpoint"] = str(tmp_path / "absent.pth")
    problems = configcheck.problems(validated(config))
    assert problems[0].startswith("models.mae.probe.checkpoint: checkpoint ")
    assert "is a mae_finetuned checkpoint, which cannot serve the probe objective" in problems[0]
    assert problems[1] == f"models.mae.finetune.checkpoint: file {tmp_path / 'absent.pth'} does not exist"


def test_a_given_checkpoint_is_evaluated_for_the_accuracy_table(tmp_path, npz_dataset):
    data_file = tmp_path / "data.pt"
    prepare.prepare_data({"dataset": "npz", "path": str(npz_dataset), "image_size": 16, "eval_samples": 8,
                          "seed": 0, "test_fraction": 0.25}, data_file)
    source = linprobe_vit(classes=3).eval()
    torch.save({"model": source.state_dict()}, tmp_path / "linprobe.pth")
    metrics = stages.evaluate(model_settings(), "probe", data_file, tmp_path / "linprobe.pth", tmp_path / "p.json")
    prepared = torch.load(data_file, weights_only=True)
    with torch.no_grad():
        expected = (source(prepared["test_images"]).argmax(-1) == prepared["test_labels"]).double().mean().item()
    assert metrics["test_top1"] == pytest.approx(expected, abs=1e-12)
    assert (metrics["stage"], metrics["checkpoint_format"]) == ("probe", "mae_linprobe")
    table = accuracy.accuracy_table([tmp_path / "p.json"], {}, tmp_path / "accuracy.csv")
    assert table.loc[0, "linear_probe_top1"] == pytest.approx(expected)
    assert table["probe_random_init_top1"].isna().all()  # no probe was trained on a random encoder
    torch.save({"model": linprobe_vit(classes=2).state_dict()}, tmp_path / "two.pth")
    with pytest.raises(ValueError, match="two.pth classifies 2 classes but data set npz has 3"):
        stages.evaluate(model_settings(), "probe", data_file, tmp_path / "two.pth", tmp_path / "q.json")


def test_config_check_names_trust_checkpoint_for_a_file_beyond_weights(tmp_path, default_config):
    arch = default_config["models"]["mae"]["arch"]
    torch.save({"model": build_mae(arch).state_dict(), "note": Fraction(1, 3)}, tmp_path / "mae.pth")
    config = default_config
    config["models"]["mae"]["checkpoint"] = str(tmp_path / "mae.pth")
    config["trajectories"] = {}  # a given checkpoint has no training to replay
    problems = configcheck.problems(validated(config))
    assert len(problems) == 1 and problems[0].startswith(f"models.mae.checkpoint: checkpoint {tmp_path / 'mae.pth'} "
                                                         "cannot be read: it holds fractions.Fraction")
    assert "set trust_checkpoint: true" in problems[0]
    config["models"]["mae"]["trust_checkpoint"] = True
    assert configcheck.problems(validated(config)) == []
