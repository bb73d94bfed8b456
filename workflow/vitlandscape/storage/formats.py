"""Checkpoint formats, recognised by their keys, and what each one can serve.

format          what it is                                                  serves
vitlandscape    written by this workflow (`kind`, `arch`, ... beside `model`) as its kind says
mae_pretrain    official MAE with decoder: mae_visualize_vit_*.pth (pixel    pretext; probe and
                targets), mae_pretrain_vit_*_full.pth (norm-pix targets)     fine-tune training
rcmae_release   RC-MAE release: `student` / `teacher`, `module.` prefix      as mae_pretrain
mae_encoder     official MAE encoder only: mae_pretrain_vit_*.pth            probe and fine-tune training
mae_finetuned   official MAE / RC-MAE fine-tuned: mean-pooled patch tokens,  finetune, supervised
                `fc_norm` instead of `norm`, linear `head`
mae_linprobe    official linear probe: cls token, `norm`, `head.0` =         probe
                BatchNorm1d(affine=False), `head.1` = Linear
timm_vit        supervised ViT from DeiT (`{'model': ...}`) or timm (a bare  supervised, finetune
                state dict, e.g. model.safetensors): cls token, `norm`, `head`
backbone        a bare encoder state dict in timm's names, no head: DINO's   probe and fine-tune training
                dino_*_pretrain.pth, timm's headless ViTs (DINOv2)
dino_full       DINO's training checkpoint: `student` (`module.backbone.*`)  probe and fine-tune training
                and `teacher` (`backbone.*`); the DINO heads are ignored
mocov3_pretrain MoCo v3's checkpoint: `state_dict` with `module.base_       probe and fine-tune training
                encoder.*`, `module.momentum_encoder.*` (projector in
                `head.*`, ignored) and `module.predictor.*`
mocov3_linprobe MoCo v3's linear probe: `state_dict` with `module.<ViT>`   probe
                and a linear `module.head` on the cls token

Any of them may be a torch file or a safetensors file (a flat state dict). Everything
loads with `weights_only=True`; detection needs only the key names. Where a file holds two
sets of weights, `prefer` (a model's `downstream_weights`) picks one by its role: `teacher` or
`momentum` the EMA one (RC-MAE's and DINO's teacher, MoCo v3's momentum encoder), `student`
or `base` the one trained by gradients.
"""
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vitlandscape.methods import EMA_WEIGHTS, GRADIENT_WEIGHTS
from vitlandscape.storage import checkpoints
from vitlandscape.storage.checkpoints import CheckpointError

FORMATS = ("vitlandscape", "mae_pretrain", "rcmae_release", "mae_encoder", "mae_finetuned", "mae_linprobe",
           "timm_vit", "backbone", "dino_full", "mocov3_pretrain", "mocov3_linprobe")
WITH_DECODER = ("mae_pretrain", "rcmae_release")
WITH_ENCODER = WITH_DECODER + ("mae_encoder", "backbone", "dino_full", "mocov3_pretrain")
# The kind of our own checkpoint a pretraining objective is measured on.
PRETRAINED_KIND = {"pretext": "mae", "contrastive": "mocov3"}
# Classifier layouts: how the head reads the encoder's tokens ('linear': a linear head on the
# cls token of an encoder with MoCo v3's fixed sin-cos position embedding).
POOLING = {"mae_finetuned": "avg", "mae_linprobe": "probe", "timm_vit": "token", "mocov3_linprobe": "linear"}
# Formats an objective's model may come from (besides our own checkpoints of the right kind).
SERVES = {"pretext": WITH_DECODER, "contrastive": ("mocov3_pretrain",), "probe": ("mae_linprobe", "mocov3_linprobe"),
          "finetune": ("mae_finetuned", "timm_vit"), "supervised": ("timm_vit", "mae_finetuned")}

DECODER_FILES = ("mae_visualize_vit_{base,large,huge}.pth (pixel targets) or "
                 "mae_pretrain_vit_{base,large,huge}_full.pth (norm-pix targets), or an RC-MAE release checkpoint")


@dataclass
class Checkpoint:
    path: Path
    format: str
    container: str  # torch | safetensors
    state: dict = field(repr=False)  # the model weights, without a `module.` prefix
    meta: dict = field(default_factory=dict, repr=False)  # the file's other entries

    @property
    def label(self) -> str:
        """How messages name it, e.g. 'timm_vit format, safetensors file'."""
        return f"{self.format} format, {self.container} file"


def is_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte header length and then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read(path: Path, trusted: bool) -> tuple[dict, str]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path), "safetensors"
        except SafetensorError as err:
            raise CheckpointError(f"checkpoint {path} cannot be read as safetensors: {err}") from err
    return checkpoints.load(path, trusted=trusted), "torch"


def _strip(state: dict) -> dict:
    return {k.removeprefix("module."): v for k, v in state.items()}


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def layout(state: dict) -> str | None:
    """The format a (prefix-free) state dict has, from its key names; None if none fits."""
    keys = set(state)
    if "decoder_embed.weight" in keys:
        return "mae_pretrain"
    if "blocks.0.attn.qkv.weight" not in keys or "patch_embed.proj.weight" not in keys:
        return None
    if {"head.0.running_mean", "head.1.weight"} <= keys:
        return "mae_linprobe"
    if {"fc_norm.weight", "head.weight"} <= keys:
        return "mae_finetuned"
    if {"norm.weight", "head.weight"} <= keys:
        return "timm_vit"
    if "norm.weight" in keys and not any(k.startswith("head") for k in keys):
        return "mae_encoder"
    return None


def _unrecognised(path, ckpt: dict, state: dict | None) -> CheckpointError:
    top = ", ".join(map(str, list(ckpt)[:12])) + (", ..." if len(ckpt) > 12 else "")
    names = ", ".join(list(state)[:8]) if state else "none"
    return CheckpointError(
        f"checkpoint {path} is in no supported format (top-level keys: {top}; parameter names: {names}). "
        f"Supported: {', '.join(FORMATS)} (see workflow/vitlandscape/storage/formats.py and config/README.md)")


def read(path, prefer: str = "teacher", trusted: bool = False) -> Checkpoint:
    """Load a checkpoint file and recognise its format (`checkpoint_header.read` does so without
    reading the tensors).

    `prefer` picks `teacher` or `student` from an RC-MAE release checkpoint (and from
    ours when it holds both without a `model` entry); `trusted`: see `checkpoints.load`.
    """
    path = Path(path)
    ckpt, container = _read(path, trusted)
    return recognise(ckpt, path, container, prefer)


def _is_ema(prefer: str) -> bool:
    if prefer not in EMA_WEIGHTS + GRADIENT_WEIGHTS:
        raise ValueError(f"prefer must be one of {', '.join(EMA_WEIGHTS + GRADIENT_WEIGHTS)}, got {prefer!r}")
    return prefer in EMA_WEIGHTS


def _under(state: dict, prefix: str) -> dict:
    """The entries of `state` under `prefix`, without it."""
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def _encoder_only(state: dict) -> bool:
    return layout({k: v for k, v in state.items() if not k.startswith("head.")}) == "mae_encoder"


def recognise(ckpt: dict, path, container: str = "torch", prefer: str = "teacher") -> Checkpoint:
    """The format of a loaded checkpoint dict (`path` names it in messages)."""
    path = Path(path)
    ema = _is_ema(prefer)
    if "kind" in ckpt and _is_state_dict(ckpt.get("model")):
        meta = {k: v for k, v in ckpt.items() if k != "model"}
        return Checkpoint(path, "vitlandscape", container, _strip(ckpt["model"]), meta)
    if "student" in ckpt and "teacher" in ckpt:
        role = "teacher" if ema else "student"
        state = _strip(ckpt[role])
        backbone = _under(state, "backbone.")
        if backbone and _encoder_only(backbone):  # DINO: the head beside the backbone is its own
            return Checkpoint(path, "dino_full", container, backbone, {"weights": role})
        if layout(state) != "mae_pretrain":
            raise _unrecognised(path, ckpt, state)
        return Checkpoint(path, "rcmae_release", container, state, {"weights": role})
    if _is_state_dict(ckpt.get("state_dict")):  # MoCo v3's main_moco.py / main_lincls.py
        state, meta = _strip(ckpt["state_dict"]), {k: v for k, v in ckpt.items() if k != "state_dict"}
        if any(k.startswith("base_encoder.") for k in state):
            role = "momentum_encoder" if ema else "base_encoder"
            encoder = {k: v for k, v in _under(state, role + ".").items() if not k.startswith("head.")}
            if not _encoder_only(encoder):
                raise _unrecognised(path, ckpt, state)
            # the whole model too: the contrastive objective needs the projector, predictor and momentum encoder
            return Checkpoint(path, "mocov3_pretrain", container, encoder, {**meta, "weights": role, "moco": state})
        if layout(state) != "timm_vit":
            raise _unrecognised(path, ckpt, state)
        return Checkpoint(path, "mocov3_linprobe", container, state, meta)
    bare = _is_state_dict(ckpt)
    if _is_state_dict(ckpt.get("model")):
        state, meta = _strip(ckpt["model"]), {k: v for k, v in ckpt.items() if k != "model"}
    elif bare:
        state, meta = _strip(ckpt), {}
    else:
        raise _unrecognised(path, ckpt, None)
    found = layout(state)
    if found is None:
        raise _unrecognised(path, ckpt, state)
    if found == "mae_encoder" and bare:  # MAE's encoder files are {'model': ...}; DINO's and timm's bare
        found = "backbone"
    return Checkpoint(path, found, container, state, meta)


def serves(ckpt: Checkpoint, objective: str) -> bool:
    """Whether the checkpoint holds the model an objective is measured on."""
    if ckpt.format == "vitlandscape":
        kind, head = ckpt.meta.get("kind"), ckpt.meta.get("head")
        if objective in PRETRAINED_KIND:
            return kind == PRETRAINED_KIND[objective]
        return kind == "classifier" and head == objective
    return ckpt.format in SERVES[objective]


def require(ckpt: Checkpoint, objective: str) -> None:
    """Raise a CheckpointError saying why the checkpoint cannot serve the objective."""
    if serves(ckpt, objective):
        return
    if objective == "pretext" and ckpt.format == "mae_encoder":
        raise CheckpointError(
            f"checkpoint {ckpt.path} is an MAE encoder without its decoder (mae_encoder): the pretext loss "
            f"needs the decoder. Use {DECODER_FILES}; the encoder-only file serves probing and fine-tuning")
    what = ckpt.format
    if ckpt.format == "vitlandscape":
        what = f"vitlandscape {ckpt.meta.get('kind')}" + (f" ({ckpt.meta['head']})" if "head" in ckpt.meta else "")
    hint = ""
    if ckpt.format in WITH_ENCODER and objective in ("probe", "finetune"):
        hint = (f"; it is a pretrained encoder: give it as the model's `checkpoint`, and the workflow trains "
                f"the {objective} on it")
    raise CheckpointError(f"checkpoint {ckpt.path} is a {what} checkpoint, which cannot serve the "
                          f"{objective} objective (that needs {', '.join(SERVES[objective])} or this "
                          f"workflow's own {objective} checkpoint){hint}")


def encoder_source(ckpt: Checkpoint) -> dict:
    """The encoder weights of a pretrained checkpoint (probe and fine-tune training)."""
    if ckpt.format in WITH_ENCODER or (ckpt.format == "vitlandscape" and ckpt.meta.get("kind") in ("mae", "mocov3")):
        return ckpt.state
    raise CheckpointError(f"checkpoint {ckpt.path} ({ckpt.label}) holds no pretrained encoder; "
                          f"probing and fine-tuning start from {', '.join(WITH_ENCODER)} or this workflow's "
                          f"pretrain.pt")


def args_norm_pix_loss(ckpt: Checkpoint):
    """`norm_pix_loss` as recorded by the checkpoint (official `args`, or ours), else None."""
    if "norm_pix_loss" in ckpt.meta:
        return bool(ckpt.meta["norm_pix_loss"])
    args = ckpt.meta.get("args")
    return getattr(args, "norm_pix_loss", None) if args is not None else None
