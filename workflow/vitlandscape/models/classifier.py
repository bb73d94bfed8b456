"""ViT classifiers: a supervised ViT from scratch, and heads on an MAE encoder.

All are timm `VisionTransformer`s, so an MAE encoder's weights (patch_embed, cls_token,
pos_embed, blocks, norm) load into them by name. They classify from the cls token, except
the official fine-tuning recipe's global pool: the mean of the patch tokens, normalised
by `fc_norm` (the encoder's final `norm` is then dropped, as the released fine-tuned
checkpoints have it).
"""
from functools import partial

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitlandscape.models.arch import resolve_arch
from vitlandscape.models.posembed import sincos_2d
from vitlandscape.storage.checkpoints import check_keys

ENCODER_PREFIXES = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm.")


def build_vit(arch: dict, num_classes: int, global_pool: bool = False, drop_path: float = 0.0) -> VisionTransformer:
    """`drop_path`: stochastic depth of the last block (rising linearly from 0 at the first), in training only."""
    dims = resolve_arch(arch, with_decoder=False)
    return VisionTransformer(img_size=dims["img_size"], patch_size=dims["patch_size"],
                             embed_dim=dims["embed_dim"], depth=dims["depth"],
                             num_heads=dims["num_heads"], num_classes=num_classes,
                             qkv_bias=True, global_pool="avg" if global_pool else "token",
                             drop_path_rate=drop_path, norm_layer=partial(nn.LayerNorm, eps=1e-6))


def build_classifier(arch: dict, num_classes: int, head: str, global_pool: bool = False,
                     drop_path: float = 0.0) -> VisionTransformer:
    """head: 'supervised' (timm's linear head, learnable position embedding),
    'probe' (BatchNorm1d(affine=False) + Linear on the cls token, MAE's fixed sin-cos
    position embedding) or 'finetune' (a linear head). With `global_pool` (the official
    fine-tuning recipe) the head reads the mean patch token through `fc_norm`, and the
    position embedding, initialised to sin-cos, trains; without it the fine-tuned model
    keeps the fixed sin-cos embedding and the cls token."""
    if global_pool and head == "probe":
        raise ValueError("the linear probe reads the cls token; global_pool is for fine-tuning")
    model = build_vit(arch, num_classes, global_pool, drop_path)
    if head == "supervised":
        return model
    grid = int(model.patch_embed.num_patches ** 0.5)
    model.pos_embed = nn.Parameter(torch.from_numpy(sincos_2d(model.embed_dim, grid)).float().unsqueeze(0),
                                   requires_grad=global_pool)
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


def classifier_for(pooling: str, arch, num_classes: int) -> VisionTransformer:
    """The classifier of a released checkpoint's layout: 'probe' (official linear probe),
    'avg' (official MAE fine-tuned), 'token' (DeiT / timm supervised ViT)."""
    if pooling == "probe":
        return build_classifier(arch, num_classes, "probe")
    if pooling == "avg":
        return build_classifier(arch, num_classes, "finetune", global_pool=True)
    if pooling == "token":
        return build_classifier(arch, num_classes, "supervised")
    raise ValueError(f"unknown pooling {pooling!r}")


def encoder_state(mae_state: dict, with_norm: bool = True) -> dict:
    """The encoder part of an MAE state_dict (drops the decoder and the mask token, and the
    final norm unless `with_norm`)."""
    prefixes = ENCODER_PREFIXES if with_norm else tuple(p for p in ENCODER_PREFIXES if p != "norm.")
    return {k: v for k, v in mae_state.items() if k.startswith(prefixes)}


def load_encoder(model: VisionTransformer, mae_state: dict) -> None:
    """Copy an MAE encoder into a classifier; every encoder tensor must match. A globally
    pooled classifier has no final `norm` (its `fc_norm` starts afresh), so none is copied."""
    encoder = encoder_state(mae_state, with_norm=model.global_pool != "avg")
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}
    check_keys(expected, encoder, what="MAE encoder")
    model.load_state_dict(encoder, strict=False)
