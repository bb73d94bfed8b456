"""Architectures by name (the official MAE presets) or by explicit dimensions.

Torch-free apart from `build_mae`, so the config checks and the cost planner read the
dimensions without paying the torch import.
"""
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


def dimensions(arch) -> dict:
    """A preset's dimensions, or the dict given, as it is (not checked or completed: the config
    checks compare what a config says with a checkpoint's shapes)."""
    return PRESETS[arch] if isinstance(arch, str) else arch


def resolve_arch(arch, with_decoder: bool) -> dict:
    """A preset name or a dict of dimensions -> a complete dict of dimensions.

    Raises ValueError naming an unknown preset or the missing keys.
    """
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
