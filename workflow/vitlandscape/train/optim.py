"""Optimisers and parameter groups of the official MAE recipes.

- Pretraining (AdamW): no weight decay on 1-D parameters (biases, norm scales) and on names
  ending in '.bias'; every other trainable tensor decays (cls_token, mask_token, and
  pos_embed when it trains); no layer-wise learning-rate decay.
- Fine-tuning (AdamW): as above, plus no weight decay on the names the model lists
  (timm's `VisionTransformer.no_weight_decay()`: pos_embed, cls_token, ...), and layer-wise
  learning-rate decay: with depth blocks, num_layers = depth + 1; cls_token, pos_embed and
  patch_embed.* are layer 0, blocks.i.* layer i + 1, everything else (norm, fc_norm, head)
  layer num_layers; a parameter of layer l has lr scale layer_decay ** (num_layers - l).
- Linear probe (LARS): only the head trains.

timm's `param_groups_layer_decay` is not used: it numbers layers from the model's
`group_matcher`, which (timm 1.0.31) puts the final `norm` in the last block's layer, so a
model with a final norm (cls-token pooling) gets norm scale layer_decay instead of 1. It
agrees with the official rule only for the globally pooled model (whose norm is an Identity).

The training loop sets each group's lr every step to `lr * group["lr_scale"]`.
"""
from collections.abc import Collection

import torch
from torch import nn

OPTIMIZERS = ("adamw", "lars")


class Lars(torch.optim.Optimizer):
    """LARS as in the official MAE linear probe (from MoCo v3).

    For a parameter p with gradient g: d = g; if p has more than one dimension, d = g + wd * p,
    then d is scaled by trust_coefficient * ||p|| / ||d|| when both norms are positive (else
    left as it is). Parameters with at most one dimension (biases, norm scales) get neither
    weight decay nor the scaling. Momentum: mu = momentum * mu + d (mu starts at zero), and
    p = p - lr * mu.
    """

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        for key, value in (("lr", lr), ("weight_decay", weight_decay), ("momentum", momentum),
                           ("trust_coefficient", trust_coefficient)):
            if value < 0:
                raise ValueError(f"Lars: {key} must be >= 0, got {value}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    p_norm = torch.linalg.vector_norm(p)
                    u_norm = torch.linalg.vector_norm(update)
                    trust = group["trust_coefficient"] * p_norm / u_norm
                    # without a host sync: q = 1 where either norm is zero
                    update = update * torch.where((p_norm > 0) & (u_norm > 0), trust, torch.ones_like(trust))
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(update)
                p.add_(mu, alpha=-group["lr"])
        return loss


def vit_layer_id(name: str, num_layers: int) -> int:
    """Layer of a timm VisionTransformer parameter in the official layer-wise decay."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None,
                 no_weight_decay: Collection[str] = ()) -> list[dict]:
    """Parameter groups of the trainable parameters of `model`, each with keys "params",
    "weight_decay" and "lr_scale".

    1-D (and 0-D) parameters, names ending in '.bias' and the exact names in
    `no_weight_decay` get weight decay 0, the others `weight_decay`. With `layer_decay`
    (neither None nor 1) the model must be a ViT with `blocks`, and the lr scales are the
    official layer-wise ones (module docstring); otherwise every scale is 1. Frozen
    parameters are left out, so a model whose trainable part is its head (a linear probe),
    or the head module itself, yields groups of the head's parameters only.
    """
    no_weight_decay = set(no_weight_decay)
    layered = layer_decay is not None and layer_decay != 1.0
    if layered:
        if not hasattr(model, "blocks"):
            raise ValueError(f"layer_decay={layer_decay} needs a ViT with `blocks`; "
                             f"{type(model).__name__} has none (use layer_decay=None)")
        num_layers = len(model.blocks) + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decays = not (p.ndim <= 1 or name.endswith(".bias") or name in no_weight_decay)
        layer = vit_layer_id(name, num_layers) if layered else 0
        key = (layer, decays)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": weight_decay if decays else 0.0,
                           "lr_scale": layer_decay ** (num_layers - layer) if layered else 1.0}
        groups[key]["params"].append(p)
    return list(groups.values())


def make_optimizer(name: str, groups: list[dict], betas=(0.9, 0.95), momentum: float = 0.9,
                   trust_coefficient: float = 0.001) -> torch.optim.Optimizer:
    """'adamw' (pretraining, fine-tuning) or 'lars' (linear probe), lr 0: the caller sets
    each group's lr every step."""
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=0.0, betas=betas)
    if name == "lars":
        return Lars(groups, momentum=momentum, trust_coefficient=trust_coefficient)
    raise ValueError(f"unknown optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")
