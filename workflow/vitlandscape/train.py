"""Training loops: MAE / RC-MAE pretraining, supervised ViT, linear probe, fine-tuning.

All use AdamW with linear warm-up and cosine decay (per step), no weight decay on 1-D
parameters (biases, norm scales), as the MAE recipes do.
"""
import copy
import math

import torch
import torch.nn.functional as F

from vitlandscape import progress
from vitlandscape.models.classifier import build_classifier, load_encoder
from vitlandscape.rcmae import ema_momentum, ema_update, step_loss as rcmae_step_loss


def learning_rate(step: int, total: int, warmup: int, base_lr: float, min_lr: float = 0.0) -> float:
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw(params, weight_decay: float, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    """Decay only tensors with ndim >= 2 that train."""
    trainable = [p for p in params if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=0.0, betas=betas)


def batches(n: int, batch_size: int, generator: torch.Generator):
    """Shuffled index batches; the last incomplete batch is dropped unless it is the only one."""
    order = torch.randperm(n, generator=generator)
    full = max(1, n // batch_size)
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(full)]


def fit(params, step_loss, n: int, hp: dict, desc: str, after_step=None) -> list[dict]:
    """Run `hp['epochs']` epochs of AdamW on `step_loss(indices, step) -> loss`.

    Returns a per-epoch history of mean loss and learning rate.
    """
    optimizer = adamw(params, hp["weight_decay"])
    generator = torch.Generator().manual_seed(hp["seed"])
    steps_per_epoch = max(1, n // hp["batch_size"])  # as many as batches() yields
    total, warmup = hp["epochs"] * steps_per_epoch, hp["warmup_epochs"] * steps_per_epoch
    history, step = [], 0
    bar = progress.bar(range(hp["epochs"]), desc, unit="epoch")
    for epoch in bar:
        losses = []
        for idx in batches(n, hp["batch_size"], generator):
            lr = learning_rate(step, total, warmup, hp["lr"])
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = step_loss(idx, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step(step, total)
            losses.append(loss.item())
            step += 1
        history.append({"epoch": epoch, "loss": sum(losses) / len(losses), "lr": lr})
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}", refresh=False)
    return history


# ---- MAE and RC-MAE ----

def pretrain_mae(model, images: torch.Tensor, cfg: dict, rcmae: bool):
    """MAE pretraining; with `rcmae`, an EMA teacher adds a consistency loss.

    Returns (history, teacher or None).
    """
    hp = {**cfg["pretrain"], "seed": cfg["seed"]}
    mask_ratio = cfg["mask_ratio"]
    model.train()
    teacher = None
    if rcmae:
        teacher = copy.deepcopy(model).eval()
        teacher.requires_grad_(False)

    def step_loss(idx, step):
        x = images[idx]
        noise = torch.rand(len(idx), model.patch_embed.num_patches, device=x.device)
        if teacher is None:
            return model(x, mask_ratio, noise)[0]
        return rcmae_step_loss(model, teacher, x, mask_ratio, noise, cfg["consistency_weight"])

    def update_teacher(step, total):
        ema_update(teacher, model, ema_momentum(step, total, cfg["ema_momentum"], cfg["ema_schedule"]))

    torch.manual_seed(cfg["seed"])
    history = fit(list(model.parameters()), step_loss, len(images), hp,
                  desc="rcmae pretrain" if rcmae else "mae pretrain",
                  after_step=update_teacher if rcmae else None)
    return history, teacher


# ---- classifiers ----

@torch.no_grad()
def accuracy(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    model.eval()
    correct = sum((model(images[i:i + batch_size]).argmax(-1) == labels[i:i + batch_size]).sum().item()
                  for i in range(0, len(images), batch_size))
    return correct / len(images)


def train_classifier(model, images, labels, hp: dict, desc: str) -> list[dict]:
    """Cross-entropy training of every parameter that trains (supervised ViT, fine-tuning)."""
    model.train()

    def step_loss(idx, step):
        return F.cross_entropy(model(images[idx]), labels[idx])

    torch.manual_seed(hp["seed"])
    return fit(list(model.parameters()), step_loss, len(images), hp, desc=desc)


@torch.no_grad()
def cls_features(model, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The normalised cls token the head sees, for a frozen encoder."""
    model.eval()
    return torch.cat([model.forward_head(model.forward_features(images[i:i + batch_size]), pre_logits=True)
                      for i in range(0, len(images), batch_size)])


def linear_probe(model, images, labels, hp: dict) -> list[dict]:
    """Train only the head on the frozen encoder's cls features (computed once: the
    encoder is frozen and there is no augmentation, so they never change)."""
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    features = cls_features(model, images)
    model.head.train()

    def step_loss(idx, step):
        return F.cross_entropy(model.head(features[idx]), labels[idx])

    torch.manual_seed(hp["seed"])
    history = fit(list(model.head.parameters()), step_loss, len(images), hp, desc="linear probe")
    model.eval()
    return history


def downstream(mae_state: dict, arch: dict, data: dict, hp: dict, head: str, device="cpu"):
    """Linear probe or fine-tune (globally pooled when `hp['global_pool']`) on top of an MAE
    encoder. Returns (model, history)."""
    torch.manual_seed(hp["seed"])  # the head's initialisation
    model = build_classifier(arch, data["num_classes"], head, hp.get("global_pool", False))
    load_encoder(model, {k: v.cpu() for k, v in mae_state.items()})
    model.to(device)
    if head == "probe":
        history = linear_probe(model, data["train_images"], data["train_labels"], hp)
    else:
        history = train_classifier(model, data["train_images"], data["train_labels"], hp, desc="fine-tune")
    return model, history
