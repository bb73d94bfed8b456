"""MoCo v3 for ViTs (Chen, Xie, He 2021; facebookresearch/moco-v3): a base encoder whose head is
a 3-layer projector, a 2-layer predictor on top of it, and a momentum encoder (an EMA copy of
the base encoder with its projector) that gives the keys.

    q1, q2 = predictor(base_encoder(x1)), predictor(base_encoder(x2))
    k1, k2 = momentum_encoder(x1), momentum_encoder(x2)          (no gradients)
    loss   = ctr(q1, k2) + ctr(q2, k1)
    ctr(q, k) = cross_entropy(normalise(q) @ normalise(k).T / T, arange(B)) * 2T

The encoder is a ViT with MoCo v3's fixed 2-D sin-cos position embedding; with
`freeze_patch_embed` (MoCo v3's `stop_grad_conv1`, its ViT default) the random patch
projection does not train either. State dict names follow the release (`base_encoder.*`,
`momentum_encoder.*`, `predictor.*`, the projector in `base_encoder.head.*`), so
`formats.recognise` reads our checkpoints as it reads theirs.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from vitlandscape.models.classifier import build_classifier


def mlp(num_layers: int, input_dim: int, hidden_dim: int, output_dim: int, last_bn: bool) -> nn.Sequential:
    """Linear (no bias), BatchNorm1d, ReLU, ..., the last Linear followed by a BatchNorm1d without
    affine when `last_bn` (the projector) and by nothing otherwise (the predictor)."""
    layers = []
    for i in range(num_layers):
        last = i == num_layers - 1
        layers.append(nn.Linear(input_dim if i == 0 else hidden_dim, output_dim if last else hidden_dim, bias=False))
        if not last:
            layers += [nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(output_dim, affine=False))
    return nn.Sequential(*layers)


def encoder(arch, dim: int, mlp_dim: int, freeze_patch_embed: bool) -> nn.Module:
    """The base encoder: the cls-token ViT with a fixed sin-cos position embedding (the probe's
    and fine-tune's encoder), its head the 3-layer projector."""
    model = build_classifier(arch, 1, "finetune")
    model.head = mlp(3, model.embed_dim, mlp_dim, dim, last_bn=True)
    if freeze_patch_embed:
        model.patch_embed.requires_grad_(False)
    return model


def contrastive_terms(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-query terms of ctr(q, k): the cross-entropy of each query's cosine logits against
    its own key (the diagonal), times 2T; `ctr` is their mean."""
    logits = F.normalize(q.float(), dim=1) @ F.normalize(k.float(), dim=1).T / temperature
    labels = torch.arange(len(q), device=q.device)
    return F.cross_entropy(logits, labels, reduction="none") * (2 * temperature)


def symmetric_loss(q1, q2, k1, k2, temperature: float) -> torch.Tensor:
    """ctr(q1, k2) + ctr(q2, k1)."""
    return contrastive_terms(q1, k2, temperature).mean() + contrastive_terms(q2, k1, temperature).mean()


class MoCoV3(nn.Module):
    def __init__(self, arch, dim: int = 256, mlp_dim: int = 4096, temperature: float = 0.2,
                 freeze_patch_embed: bool = True):
        super().__init__()
        self.temperature = temperature
        self.base_encoder = encoder(arch, dim, mlp_dim, freeze_patch_embed)
        self.momentum_encoder = copy.deepcopy(self.base_encoder)
        self.momentum_encoder.requires_grad_(False)
        self.predictor = mlp(2, dim, mlp_dim, dim, last_bn=False)

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.base_encoder(x))

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        return self.momentum_encoder(x)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """The symmetrised loss of one batch of two views."""
        return symmetric_loss(self.queries(x1), self.queries(x2), self.keys(x1), self.keys(x2), self.temperature)


def from_config(model_cfg: dict) -> MoCoV3:
    """The MoCo v3 model of a model entry (`arch` and its `moco` settings)."""
    moco = model_cfg["moco"]
    return MoCoV3(model_cfg["arch"], moco["dim"], moco["mlp_dim"], moco["temperature"], moco["freeze_patch_embed"])


class Online(nn.Module):
    """What a contrastive landscape moves: the base encoder (projector included) and the
    predictor, named as in the checkpoint; the momentum encoder stays at the checkpoint's
    weights (its keys are computed once), so it is not part of this module."""

    def __init__(self, model: MoCoV3):
        super().__init__()
        self.base_encoder, self.predictor = model.base_encoder, model.predictor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.base_encoder(x))
