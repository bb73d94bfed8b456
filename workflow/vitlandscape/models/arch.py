"""Architectures by name (the official MAE presets), by explicit dimensions, or any timm
VisionTransformer by its timm name (`{timm: NAME, img_size: N, ...}`: the other keys are
timm's keyword arguments, e.g. `depth`, `reg_tokens`).

Torch-free for presets and explicit dimensions, so the config checks and the cost planner
read them without paying the torch import; a timm arch's dimensions come from building the
timm model on the meta device (no weights), which imports timm.
"""
import json
from functools import lru_cache

ENCODER_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads")
DECODER_KEYS = ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")

_DECODER = {"decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16}
PRESETS = {
    "mae_vit_base_patch16": {"img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12,
                             "num_heads": 12, **_DECODER},
    "mae_vit_large_patch16": {"img_size": 224, "patch_size": 16, "embed_dim": 1024, "depth": 24,
                              "num_heads": 16, **_DECODER},
    "mae_vit_huge_patch14": {"img_size": 224, "patch_size": 14, "embed_dim": 1280, "depth": 32,
                             "num_heads": 16, **_DECODER},
    # supervised ViTs (timm / DeiT names), encoder only
    "vit_small_patch16": {"img_size": 224, "patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base_patch16": {"img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_large_patch16": {"img_size": 224, "patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16},
    "vit_huge_patch14": {"img_size": 224, "patch_size": 14, "embed_dim": 1280, "depth": 32, "num_heads": 16},
}


def is_timm(arch) -> bool:
    return isinstance(arch, dict) and "timm" in arch


def timm_kwargs(arch: dict) -> dict:
    """What a timm arch passes to `timm.create_model` besides the name. The encoder dimensions
    `resolve_arch` fills in are the model's own, so passing them back builds the same model."""
    return {k: v for k, v in arch.items() if k != "timm"}


@lru_cache(maxsize=None)
def _timm_dims(spec: str) -> dict:
    from timm.models.vision_transformer import VisionTransformer

    arch = json.loads(spec)
    model = create_timm(arch, num_classes=0, device="meta")
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"arch.timm: {arch['timm']} builds a {type(model).__name__}, not a timm "
                         f"VisionTransformer, which is what this workflow measures")
    sizes = {tuple(model.patch_embed.img_size), tuple(model.patch_embed.patch_size)}
    if any(size[0] != size[1] for size in sizes):
        raise ValueError(f"arch.timm: {arch['timm']} has non-square images or patches; expected square ones")
    return {"img_size": model.patch_embed.img_size[0], "patch_size": model.patch_embed.patch_size[0],
            "embed_dim": model.embed_dim, "depth": len(model.blocks), "num_heads": model.blocks[0].attn.num_heads}


def create_timm(arch: dict, num_classes: int, device=None, **kwargs):
    """The timm model of a timm arch, randomly initialised (never downloaded): `kwargs` add to
    the arch's own keyword arguments (pooling, stochastic depth)."""
    import timm
    import torch

    name = arch["timm"]
    if ":" in name:  # hf-hub:..., local-dir:...: timm would read a config from there
        raise ValueError(f"arch.timm: {name!r} names a model source; give a name of timm's own registry "
                         f"(timm.list_models()), the weights come from `checkpoint`")
    if "img_size" not in arch:
        raise ValueError(f"arch.img_size is needed beside arch.timm ({name}): the image size the model sees")
    try:
        with torch.device(device or "cpu"):
            return timm.create_model(name, pretrained=False, num_classes=num_classes, **timm_kwargs(arch), **kwargs)
    except RuntimeError as err:  # timm's message for an unknown name
        raise ValueError(f"arch.timm: {err}; see timm.list_models()") from err
    except TypeError as err:  # a keyword the model does not take
        raise ValueError(f"arch: timm's {name} does not take these settings: {err}") from err


def dimensions(arch) -> dict:
    """A preset's dimensions, a timm arch's (from its model), or the dict given, as it is (not
    checked or completed: the config checks compare what a config says with a checkpoint's shapes)."""
    if is_timm(arch):
        return {**arch, **_timm_dims(json.dumps(arch, sort_keys=True))}
    return PRESETS[arch] if isinstance(arch, str) else arch


def resolve_arch(arch, with_decoder: bool) -> dict:
    """A preset name or a dict of dimensions -> a complete dict of dimensions; a timm arch ->
    itself with its encoder dimensions filled in (a timm ViT has no MAE decoder).

    Raises ValueError naming an unknown preset or the missing keys.
    """
    if is_timm(arch):
        if with_decoder:
            raise ValueError(f"arch.timm: {arch['timm']} has no MAE decoder; a timm arch serves the "
                             f"supervised, probe and finetune objectives")
        return dimensions(arch)
    if isinstance(arch, str):
        if arch not in PRESETS:
            raise ValueError(f"unknown arch preset {arch!r}; known: {', '.join(PRESETS)}")
        arch = PRESETS[arch]
    needed = ENCODER_KEYS + (DECODER_KEYS if with_decoder else ())
    missing = [k for k in needed if k not in arch]
    if missing:
        raise ValueError(f"arch is missing {', '.join(missing)}")
    return {k: int(arch[k]) for k in needed}


def build_mae(arch: dict, norm_pix_loss: bool = False):
    """The MAE autoencoder (a `MaskedAutoencoderViT`) of `arch`."""
    from vitlandscape.models.mae import MaskedAutoencoderViT
    return MaskedAutoencoderViT(**resolve_arch(arch, with_decoder=True), norm_pix_loss=norm_pix_loss)
