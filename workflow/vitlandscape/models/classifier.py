"""ViT classifiers: a supervised ViT from scratch, and heads on an MAE encoder.

All are timm `VisionTransformer`s classifying from the cls token, so an MAE encoder's
weights (patch_embed, cls_token, pos_embed, blocks, norm) load into them by name.
"""
from functools import partial

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitlandscape.checkpoints import check_keys
from vitlandscape.models.arch import resolve_arch
from vitlandscape.models.posembed import sincos_2d

ENCODER_PREFIXES = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm.")


def build_vit(arch: dict, num_classes: int) -> VisionTransformer:
    dims = resolve_arch(arch, with_decoder=False)
    return VisionTransformer(img_size=dims["img_size"], patch_size=dims["patch_size"],
                             embed_dim=dims["embed_dim"], depth=dims["depth"],
                             num_heads=dims["num_heads"], num_classes=num_classes,
                             qkv_bias=True, global_pool="token",
                             norm_layer=partial(nn.LayerNorm, eps=1e-6))


def build_classifier(arch: dict, num_classes: int, head: str) -> VisionTransformer:
    """head: 'supervised' (timm's linear head, learnable position embedding),
    'probe' (BatchNorm1d(affine=False) + Linear, the MAE linear-probe head) or
    'finetune' (a linear head); the last two keep MAE's fixed sin-cos position embedding."""
    model = build_vit(arch, num_classes)
    if head == "supervised":
        return model
    grid = int(model.patch_embed.num_patches ** 0.5)
    model.pos_embed = nn.Parameter(
        torch.from_numpy(sincos_2d(model.embed_dim, grid)).float().unsqueeze(0), requires_grad=False)
    linear = nn.Linear(model.embed_dim, num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.01 if head == "probe" else 2e-5)
    nn.init.zeros_(linear.bias)
    if head == "probe":
        model.head = nn.Sequential(nn.BatchNorm1d(model.embed_dim, affine=False, eps=1e-6), linear)
    elif head == "finetune":
        model.head = linear
    else:
        raise ValueError(f"unknown classifier head {head!r}")
    return model


def encoder_state(mae_state: dict) -> dict:
    """The encoder part of an MAE state_dict (drops the decoder and the mask token)."""
    return {k: v for k, v in mae_state.items() if k.startswith(ENCODER_PREFIXES)}


def load_encoder(model: VisionTransformer, mae_state: dict) -> None:
    """Copy an MAE encoder into a classifier; every encoder tensor must match."""
    encoder = encoder_state(mae_state)
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}
    check_keys(expected, encoder, what="MAE encoder")
    model.load_state_dict(encoder, strict=False)
