"""The MAE model: official state_dict layout, sin-cos embeddings, patchify, loss."""
import math

import numpy as np
import pytest
import torch

import reference
from conftest import TINY_ARCH
from vitlandscape.models.arch import build_mae
from vitlandscape.models.classifier import build_classifier
from vitlandscape.models.posembed import sincos_2d


def official_base_layout() -> dict:
    """mae_vit_base_patch16 as released by the MAE authors (listed by hand, no download)."""
    d, dd, patches = 768, 512, 196
    layout = {"cls_token": (1, 1, d), "pos_embed": (1, patches + 1, d),
              "mask_token": (1, 1, dd), "decoder_pos_embed": (1, patches + 1, dd),
              "patch_embed.proj.weight": (d, 3, 16, 16), "patch_embed.proj.bias": (d,),
              "norm.weight": (d,), "norm.bias": (d,),
              "decoder_embed.weight": (dd, d), "decoder_embed.bias": (dd,),
              "decoder_norm.weight": (dd,), "decoder_norm.bias": (dd,),
              "decoder_pred.weight": (16 * 16 * 3, dd), "decoder_pred.bias": (16 * 16 * 3,)}

    def block(prefix, width):
        return {f"{prefix}.norm1.weight": (width,), f"{prefix}.norm1.bias": (width,),
                f"{prefix}.attn.qkv.weight": (3 * width, width), f"{prefix}.attn.qkv.bias": (3 * width,),
                f"{prefix}.attn.proj.weight": (width, width), f"{prefix}.attn.proj.bias": (width,),
                f"{prefix}.norm2.weight": (width,), f"{prefix}.norm2.bias": (width,),
                f"{prefix}.mlp.fc1.weight": (4 * width, width), f"{prefix}.mlp.fc1.bias": (4 * width,),
                f"{prefix}.mlp.fc2.weight": (width, 4 * width), f"{prefix}.mlp.fc2.bias": (width,)}

    for i in range(12):
        layout.update(block(f"blocks.{i}", d))
    for i in range(8):
        layout.update(block(f"decoder_blocks.{i}", dd))
    return layout


def test_base_preset_matches_official_layout():
    model = build_mae("mae_vit_base_patch16")
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == official_base_layout()
    assert len(got) == 254


def test_position_embeddings_are_fixed_sincos():
    model = build_mae(TINY_ARCH)
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    emb = model.pos_embed[0].numpy()
    assert np.all(emb[0] == 0)  # cls position
    # patch (row 1, col 2) of a 4x4 grid: first half encodes the column, second the row
    d = emb.shape[1]
    omega = 1 / 10000 ** (np.arange(d // 4) / (d / 4))
    col, row = 2, 1
    expected = np.concatenate([np.sin(col * omega), np.cos(col * omega), np.sin(row * omega), np.cos(row * omega)])
    np.testing.assert_allclose(emb[1 + row * 4 + col], expected, rtol=1e-6, atol=1e-7)
    assert sincos_2d(8, 3).shape == (10, 8)


def test_patchify_round_trip_and_pixel_order():
    model = build_mae(TINY_ARCH)
    imgs = torch.randn(2, 3, 16, 16)
    patches = model.patchify(imgs)
    assert patches.shape == (2, 16, 4 * 4 * 3)
    # patch 5 = grid row 1, col 1; its first entries are pixel (4, 4) channels 0..2
    torch.testing.assert_close(patches[0, 5, :3], imgs[0, :, 4, 4])
    torch.testing.assert_close(model.unpatchify(patches), imgs)


def test_loss_is_mean_over_masked_patches():
    torch.manual_seed(0)
    model = build_mae(TINY_ARCH).eval()
    imgs = torch.randn(3, 3, 16, 16)
    noise = torch.rand(3, 16)
    with torch.no_grad():
        loss, pred, mask = model(imgs, 0.75, noise)
    target = model.patchify(imgs)
    per_patch = ((pred - target) ** 2).mean(-1)
    assert mask.sum().item() == 3 * (16 - 4)
    torch.testing.assert_close(loss, per_patch[mask.bool()].mean())


def test_norm_pix_loss_standardises_each_target_patch():
    model = build_mae(TINY_ARCH, norm_pix_loss=True).eval()
    imgs = torch.randn(2, 3, 16, 16) * 5 + 3
    pred = torch.zeros(2, 16, 48)
    per_patch = model.patch_losses(imgs, pred)
    target = model.patchify(imgs)
    # with a zero prediction the loss is the mean square of the standardised target:
    # (n - 1) / n * var / (var + 1e-6) for the unbiased variance
    var = target.var(-1)
    expected = (target.shape[-1] - 1) / target.shape[-1] * var / (var + 1e-6)
    torch.testing.assert_close(per_patch, expected)
    assert math.isclose(per_patch.mean().item(), 47 / 48, rel_tol=1e-3)


def _jittered(model):
    """Weights moved off their initial values, so LayerNorm scales and biases matter too."""
    torch.manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("norm_pix", [False, True])
def test_pretext_loss_matches_the_float64_reference(norm_pix):
    model = _jittered(build_mae(TINY_ARCH, norm_pix_loss=norm_pix))
    imgs = torch.randn(5, 3, 16, 16)
    noise = torch.rand(5, 16)
    with torch.no_grad():
        loss, pred, mask = model(imgs, 0.75, noise)
    ref_loss, ref_pred, ref_mask = reference.mae_forward(model.state_dict(), TINY_ARCH, imgs, noise, 0.75, norm_pix)
    assert torch.equal(mask.double(), ref_mask)
    torch.testing.assert_close(pred.double(), ref_pred, rtol=1e-5, atol=1e-5)
    # float32 forward vs float64: <= 1.5e-7 relative over 40 draws, AVX2 and non-vectorised
    # kernels alike; 2e-6 leaves 10x and still sees norm_pix's eps 1e-6 -> 1e-5 (6e-6)
    assert math.isclose(loss.item(), float(ref_loss), rel_tol=2e-6)


@pytest.mark.parametrize("head", ["probe", "finetune", "supervised"])
def test_classifier_logits_match_the_float64_reference(head):
    model = _jittered(build_classifier(TINY_ARCH, 5, head))
    if head == "probe":
        model.head[0].running_mean.normal_()
        model.head[0].running_var.uniform_(0.5, 2.0)
    imgs = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        logits = model(imgs)
    expected = reference.classifier_logits(model.state_dict(), TINY_ARCH, imgs, head)
    torch.testing.assert_close(logits.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset,timm_name", [("vit_small_patch16", "vit_small_patch16_224"),
                                              ("vit_base_patch16", "vit_base_patch16_224"),
                                              ("vit_large_patch16", "vit_large_patch16_224"),
                                              ("vit_huge_patch14", "vit_huge_patch14_224")])
def test_supervised_presets_have_timms_layout(preset, timm_name):
    """Names and shapes as timm's (and DeiT's) models of that name: their weights load strictly."""
    import timm

    with torch.device("meta"):  # shapes only, no memory
        ours = build_classifier(preset, 1000, "supervised").state_dict()
        theirs = timm.create_model(timm_name, pretrained=False, num_classes=1000).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
