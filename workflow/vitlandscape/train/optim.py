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
- Any of them may run under sharpness-aware minimisation (`SAM`, recipe element `sam`): the
  recipe's optimizer takes its step with the gradient at the worst nearby weights.

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
SAM_MODES = ("none", "sam", "asam")


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


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation (Foret et al. 2021) around a base optimizer; with `adaptive`,
    ASAM (Kwon et al. 2021).

    `base_optimizer` is an optimizer class (torch.optim.AdamW, Lars, ...), built with `**kwargs`
    on SAM's own parameter groups: the two share the group dicts and the list, so a group's
    `lr` (or any setting) set on `sam.param_groups` is the base optimizer's.

    `step(closure)`: the caller has run the forward and backward at the weights w. With g the
    gradients of every parameter that has one, the step moves the weights to w + e,
    e = rho * g / ||g|| (ASAM: e = rho * w**2 * g / ||w * g||, elementwise; one norm over all
    those parameters, each part computed on its parameter's device), calls `closure` (which
    zeroes the gradients and computes the loss and its gradients again, at w + e), puts w back
    exactly, and takes the base optimizer's step with the gradients from w + e. Returns the
    closure's loss, that at w + e.
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05, adaptive: bool = False, **kwargs):
        if not rho > 0:
            raise ValueError(f"SAM: rho must be > 0, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups  # the same list of the same dicts
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def perturbation(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(parameter, e) of every parameter with a gradient, from the gradients at w."""
        pairs = [(p, group) for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not pairs:
            return []
        shared = pairs[0][0].device
        scaled = [p.grad * p.abs() if group["adaptive"] else p.grad for p, group in pairs]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s).to(shared) for s in scaled]))
        out = []
        for (p, group), s in zip(pairs, scaled):
            scale = (group["rho"] / (norm + 1e-12)).to(p.device)
            out.append((p, (s * p.abs() if group["adaptive"] else s) * scale))  # ASAM: w**2 * g
        return out

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise ValueError("SAM.step needs a closure that computes the loss and its gradients again")
        saved = []
        for p, e in self.perturbation():
            saved.append((p, p.detach().clone()))
            p.add_(e)
        with torch.enable_grad():
            loss = closure()
        for p, w in saved:
            p.copy_(w)  # w itself, not w + e - e
        self.base_optimizer.step()
        return loss

    def state_dict(self) -> dict:
        """The base optimizer's (SAM keeps no state between steps; its groups are the base's)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups


def vit_layer_id(name: str, num_layers: int) -> int:
    """Layer of a timm VisionTransformer parameter in the official layer-wise decay."""
    if name in ("cls_token", "reg_token", "pos_embed") or name.startswith("patch_embed"):  # reg_token: timm registers
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
                   trust_coefficient: float = 0.001, sam: str = "none", rho: float = 0.05) -> torch.optim.Optimizer:
    """'adamw' (pretraining, fine-tuning) or 'lars' (linear probe), lr 0: the caller sets
    each group's lr every step. `sam` 'sam' or 'asam' wraps it in SAM with radius `rho`
    (its `step` then needs a closure)."""
    if name == "adamw":
        base, kwargs = torch.optim.AdamW, dict(lr=0.0, betas=betas)
    elif name == "lars":
        base, kwargs = Lars, dict(momentum=momentum, trust_coefficient=trust_coefficient)
    else:
        raise ValueError(f"unknown optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")
    if sam == "none":
        return base(groups, **kwargs)
    if sam not in SAM_MODES:
        raise ValueError(f"unknown sam {sam!r}: expected one of {', '.join(SAM_MODES)}")
    return SAM(groups, base, rho=rho, adaptive=sam == "asam", **kwargs)
