"""ViT classifiers: a supervised ViT from scratch, and heads on an MAE encoder.

All are timm `VisionTransformer`s, so an MAE encoder's weights (patch_embed, cls_token,
pos_embed, blocks, norm) load into them by name. They classify from the cls token, except
the official fine-tuning recipe's global pool: the mean of the patch tokens, normalised
by `fc_norm` (the encoder's final `norm` is then dropped, as the released fine-tuned
checkpoints have it).

A timm arch (`{timm: NAME, ...}`) builds that timm ViT as timm defines it (layer scale,
registers, its own position embedding, which trains where the model trains it) with the same
heads; its encoder is every tensor but the head (and `fc_norm`).
"""
from functools import partial

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitlandscape.models.arch import create_timm, is_timm, resolve_arch
from vitlandscape.models.posembed import sincos_2d
from vitlandscape.storage.checkpoints import check_keys

ENCODER_PREFIXES = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm.")


def build_vit(arch: dict, num_classes: int, global_pool: bool = False, drop_path: float = 0.0) -> VisionTransformer:
    """`drop_path`: stochastic depth of the last block (rising linearly from 0 at the first), in training only."""
    dims = resolve_arch(arch, with_decoder=False)
    if is_timm(dims):
        return create_timm(dims, num_classes, global_pool="avg" if global_pool else "token", drop_path_rate=drop_path)
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
    if not is_timm(arch):  # a timm ViT keeps its own position embedding
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
    'avg' (official MAE fine-tuned), 'token' (DeiT / timm supervised ViT), 'linear' (MoCo v3's
    linear probe: a linear head on the cls token, fixed sin-cos position embedding)."""
    if pooling == "probe":
        return build_classifier(arch, num_classes, "probe")
    if pooling == "linear":
        return build_classifier(arch, num_classes, "finetune")
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


def is_encoder_key(name: str, timm_arch: bool) -> bool:
    """Whether a classifier's tensor belongs to the encoder it starts from: the MAE encoder's
    names, or, for a timm arch, everything but the head and `fc_norm` (registers, layer scale)."""
    if timm_arch:
        return not name.startswith(("head.", "fc_norm."))
    return name.startswith(ENCODER_PREFIXES)


def encoder_weights(model: VisionTransformer, state: dict, timm_arch: bool = False) -> tuple[dict, dict]:
    """(the classifier's encoder tensors, the pretrained ones meant for them). A globally pooled
    classifier has no final `norm` (its `fc_norm` starts afresh), so none is taken. A timm arch's
    encoder comes in timm's names, its position embedding resampled to the model's grid as timm's
    own checkpoint filter does."""
    expected = {k: v for k, v in model.state_dict().items() if is_encoder_key(k, timm_arch)}
    without_norm = not any(k.startswith("norm.") for k in expected)
    if not timm_arch:
        return expected, encoder_state(state, with_norm=not without_norm)
    return expected, {k: v for k, v in timm_state(model, state).items()
                      if is_encoder_key(k, True) and not (without_norm and k.startswith("norm."))}


def load_encoder(model: VisionTransformer, state: dict, timm_arch: bool = False) -> None:
    """Copy a pretrained encoder into a classifier; every encoder tensor must match."""
    expected, encoder = encoder_weights(model, state, timm_arch)
    check_keys(expected, encoder, what="pretrained encoder")
    model.load_state_dict(encoder, strict=False)


def timm_state(model: VisionTransformer, state: dict) -> dict:
    """A state dict in timm's names made to fit `model` by timm's checkpoint filter (position
    embeddings resampled to the model's grid, DINOv2's original names converted); says so
    when it resampled."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    fitted = checkpoint_filter_fn(dict(state), model)
    before, after = state.get("pos_embed"), fitted.get("pos_embed")
    if before is not None and after is not None and before.shape != after.shape:
        print(f"pos_embed resampled from {tuple(before.shape)} to {tuple(after.shape)} (bicubic, as timm's "
              f"checkpoint filter does) for img_size {model.patch_embed.img_size[0]}")
    return fitted
