"""MoCo v3 pretraining (facebookresearch/moco-v3 main_moco.py, for ViTs): two augmented views of
each image (augment/twoview.py), the symmetrised contrastive loss of models/mocov3.py, the
recipe's optimizer on the base encoder and predictor, and after every step the momentum encoder
moved towards the base encoder with m rising from `moco.momentum` to 1 by a cosine over the
steps (MoCo v3's schedule; `moco.momentum_schedule: constant` keeps m).
"""
import torch

from vitlandscape.augment.twoview import TwoViews
from vitlandscape.models.mocov3 import Online
from vitlandscape.train import optim
from vitlandscape.train.loops import fit
from vitlandscape.train.rcmae import ema_momentum, ema_update


def view_pairs(seed: int, recipe: dict) -> callable:
    """fit's batch augmentation: the batch's two views (with the recipe's crop scale and flip
    probability), concatenated (SAM's second pass then sees the same views, as it sees the same
    images)."""
    views = TwoViews(seed, crop_scale=tuple(recipe["crop_scale"] or (0.08, 1.0)), flip_p=recipe["hflip"])

    def augment(images, labels):
        v1, v2 = views(images)
        return torch.cat([v1, v2]), labels
    return augment


def pretrain(model, batches, cfg: dict, stage_cfg: dict, record=None) -> list[dict]:
    """Train `model` (models/mocov3.MoCoV3) with the model's `cfg` and its stage's `stage_cfg`
    (recipes.resolve); `record` follows the base encoder. Returns the per-epoch history."""
    moco = cfg["moco"]
    total = stage_cfg["epochs"] * len(batches)
    model.train()

    def momentum(step):
        return ema_momentum(step, total, moco["momentum"], moco["momentum_schedule"])

    def step_loss(x, labels, step):
        v1, v2 = x.chunk(2)
        loss = model(v1, v2)
        return loss, {"contrastive_loss": loss.detach(), "momentum": momentum(step)}

    def update_momentum_encoder(step, total):  # every parameter, the projector's included
        ema_update(model.momentum_encoder, model.base_encoder, momentum(step))

    if record is not None:
        record.watch(model.base_encoder)
    torch.manual_seed(cfg["seed"])
    groups = optim.param_groups(Online(model), stage_cfg["weight_decay"], stage_cfg["recipe"]["layer_decay"],
                                stage_cfg["recipe"]["no_weight_decay"])
    return fit(groups, step_loss, batches, stage_cfg, desc="mocov3 pretrain", after_step=update_momentum_encoder,
               record=record, augmentation=view_pairs(stage_cfg["seed"] + 1, stage_cfg["recipe"]))
