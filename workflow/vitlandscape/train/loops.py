"""Training loops: MAE / RC-MAE pretraining, supervised ViT, linear probe, fine-tuning.

Each stage trains as its recipe says (`recipes.resolve`: optimizer and parameter groups,
per-step schedule, augmentation, mixed precision, and SAM if asked); the defaults are the
official recipes.
"""
import contextlib
import copy
import math

import torch
import torch.nn.functional as F

from vitlandscape import devices, faults, methods, progress
from vitlandscape.data import prepare
from vitlandscape.models.arch import is_timm
from vitlandscape.models.classifier import build_classifier, load_encoder
from vitlandscape.train import optim, recipes
from vitlandscape.train.rcmae import ema_momentum, ema_update, teacher_prediction
from vitlandscape.train.rcmae import step_losses as rcmae_step_losses


def learning_rate(step: int, total: int, warmup: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 over `warmup` steps, then half a cosine down to `min_lr` (the MAE
    recipes' schedule, per step)."""
    if step < warmup:
        return base_lr * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def rng_state(device) -> tuple:
    """The random states a step draws from (MAE masks, drop path): the CPU's and, on a GPU, its own."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_rng_state(state: tuple, device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@contextlib.contextmanager
def buffers_kept(module):
    """The module's buffers (batch-norm running statistics) as they were before, after the block."""
    saved = [(b, b.clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def sam_closure(optimizer, step_loss, images, labels, step: int, start: tuple, precision: str, device):
    """SAM's second pass (optim.SAM.step calls it at the perturbed weights): the same step's loss
    on the same batch, with the same random draws (the RNG state `start` the first pass began
    from: the same mask, the same dropped paths), in the same precision, and its gradients. The
    RNG goes on afterwards from where the first pass left it, as it does without SAM."""
    def closure():
        optimizer.zero_grad(set_to_none=True)
        after = rng_state(device)
        set_rng_state(start, device)
        with devices.precision(precision, device):
            loss = step_loss(images, labels, step)
        set_rng_state(after, device)
        loss = loss[0] if isinstance(loss, tuple) else loss
        loss.backward()
        return loss.detach()
    return closure


def fit(groups: list[dict], step_loss, batches, stage_cfg: dict, desc: str, after_step=None, record=None,
        augmentation=None) -> list[dict]:
    """Run `stage_cfg['epochs']` epochs of the recipe's optimizer on `step_loss(images, targets, step)`,
    which returns the loss, or (loss, parts): a dict of the loss's parts, recorded in `record`'s curve.

    `groups`: optim.param_groups, each group's lr is the schedule's times its `lr_scale`.
    `batches` yields one epoch of (images, labels) per iteration and has `len()` steps
    (`data.prepare.train_batches`: in-memory tensors or a DataLoader); batches are moved to the
    parameters' device and augmented by `augmentation` (augment/batch.py's Augmentation), if any.
    `record` (recording.TrainingRecord, watching its model): one curve row a step, and its
    snapshots. Returns a per-epoch history of mean loss and learning rate.

    With the recipe's `sam` (sam or asam) the optimizer is optim.SAM around the recipe's: each step
    calls `step_loss` a second time (`sam_closure`) at the perturbed weights; the curve records the
    first pass's loss, at the weights before the step. `after_step` runs after SAM's whole step.
    """
    recipe = stage_cfg["recipe"]
    sam = recipes.uses_sam(recipe)
    optimizer = optim.make_optimizer(recipe["optimizer"], groups, betas=tuple(recipe["betas"]),
                                     sam=recipe["sam"], rho=recipe["sam_rho"])
    device = groups[0]["params"][0].device
    total, warmup = stage_cfg["epochs"] * len(batches), stage_cfg["warmup_epochs"] * len(batches)
    history, step = [], 0
    if record is not None:
        record.begin(total)
    bar = progress.bar(range(stage_cfg["epochs"]), desc, unit="epoch")
    for epoch in bar:
        losses = []
        for images, labels in batches:
            lr = learning_rate(step, total, warmup, stage_cfg["lr"], recipe["min_lr"])
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if augmentation is not None:
                images, labels = augmentation(images, labels)
            if sam:
                start = rng_state(device)
            with devices.precision(recipe["precision"], device):  # weights, gradients, optimizer: fp32
                loss = step_loss(images, labels, step)
            loss, parts = loss if isinstance(loss, tuple) else (loss, {})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if sam:
                optimizer.step(sam_closure(optimizer, step_loss, images, labels, step, start, recipe["precision"],
                                           device))
            else:
                optimizer.step()
            if after_step is not None:
                after_step(step, total)
            losses.append(loss.item())
            if record is not None:
                record.step(step, epoch, lr, losses[-1], parts)
            faults.sigkill_at_step(desc, step)  # test hook: crash mid-training; inert when unset
            step += 1
        history.append({"epoch": epoch, "loss": sum(losses) / len(losses), "lr": lr})
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}", refresh=False)
    return history


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy on class indices (with label smoothing) or on mixed soft targets, which
    carry their smoothing already."""
    if targets.ndim == 2:
        return F.cross_entropy(logits.float(), targets)
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


# ---- MAE and RC-MAE ----

def pretrain_mae(model, batches, cfg: dict, stage_cfg: dict, rcmae: bool, record=None, augmentation=None):
    """MAE pretraining with the model's `cfg` and its stage's `stage_cfg` (`recipes.resolve`); with
    `rcmae`, an EMA teacher adds a consistency loss (its weights stay float32: the EMA update
    runs after the step, outside autocast; with SAM, after SAM's second pass, which reuses the
    teacher's prediction of the first). `record` follows the weights the checkpoint's
    `model` keeps (for RC-MAE, per `downstream_weights`); `augmentation` as in `fit`.

    Returns (history, teacher or None).
    """
    mask_ratio = cfg["mask_ratio"]
    model.train()
    teacher = None
    if rcmae:
        teacher = copy.deepcopy(model).eval()
        teacher.requires_grad_(False)

    total = stage_cfg["epochs"] * len(batches)
    sam = recipes.uses_sam(stage_cfg["recipe"])
    targets = {}  # with SAM: the teacher's prediction at the current step (its weights move after the step)

    def momentum(step):
        base = recipes.batch_scaled(cfg["ema_momentum"], stage_cfg["batch_size"], cfg.get("ema_batch_reference"))
        return ema_momentum(step, total, base, cfg["ema_schedule"])

    def step_loss(x, labels, step):
        noise = torch.rand(len(x), model.patch_embed.num_patches, device=x.device)
        if teacher is None:
            loss = model(x, mask_ratio, noise)[0]
            return loss, {"reconstruction_loss": loss.detach()}
        target = None
        if sam:  # SAM's second pass sees the same images and mask (fit replays the RNG): the same target
            if step not in targets:
                targets.clear()
                targets[step] = teacher_prediction(teacher, x, mask_ratio, noise)
            target = targets[step]
        loss, reconstruction, consistency = rcmae_step_losses(model, teacher, x, mask_ratio, noise,
                                                              cfg["consistency_weight"], target)
        return loss, {"reconstruction_loss": reconstruction, "consistency_loss": consistency,
                      "momentum": momentum(step)}

    def update_teacher(step, total):
        ema_update(teacher, model, momentum(step))

    if record is not None:
        record.watch(teacher if teacher is not None and methods.downstream_is_ema(cfg) else model)
    torch.manual_seed(cfg["seed"])
    groups = optim.param_groups(model, stage_cfg["weight_decay"], stage_cfg["recipe"]["layer_decay"],
                                stage_cfg["recipe"]["no_weight_decay"])
    history = fit(groups, step_loss, batches, stage_cfg, desc="rcmae pretrain" if rcmae else "mae pretrain",
                  after_step=update_teacher if rcmae else None, record=record, augmentation=augmentation)
    return history, teacher


# ---- classifiers ----

@torch.no_grad()
def accuracy(model, batches) -> float:
    """Top-1 over (images, labels) batches."""
    model.eval()
    device = next(model.parameters()).device
    correct = count = 0
    for images, labels in batches:
        correct += (model(images.to(device)).argmax(-1) == labels.to(device)).sum().item()
        count += len(labels)
    return correct / count


def train_classifier(model, batches, stage_cfg: dict, desc: str, record=None, augmentation=None) -> list[dict]:
    """Cross-entropy training of every parameter that trains (supervised ViT, fine-tuning),
    with the recipe's parameter groups (layer-wise lr decay, no weight decay on its list)."""
    model.train()
    recipe = stage_cfg["recipe"]

    def step_loss(images, targets, step):
        return classification_loss(model(images), targets, recipe["label_smoothing"])

    if record is not None:
        record.watch(model)
    torch.manual_seed(stage_cfg["seed"])
    groups = optim.param_groups(model, stage_cfg["weight_decay"], recipe["layer_decay"], recipe["no_weight_decay"])
    return fit(groups, step_loss, batches, stage_cfg, desc=desc, record=record, augmentation=augmentation)


def encode(model, images: torch.Tensor) -> torch.Tensor:
    """The normalised cls token the head sees."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


@torch.no_grad()
def cls_features(model, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of a frozen encoder over (images, labels) batches."""
    model.eval()
    device = next(model.parameters()).device
    pairs = [(encode(model, images.to(device)), labels.to(device)) for images, labels in batches]
    return torch.cat([f for f, _ in pairs]), torch.cat([y for _, y in pairs])


def linear_probe(model, batches, stage_cfg: dict, cached: bool, record=None, augmentation=None) -> list[dict]:
    """Train only the head on the frozen encoder's cls token.

    cached: `batches` are the training split in order, not augmented; the features are
    computed once and the head trains on shuffled batches of them. Otherwise (the recipe)
    `batches` are training batches, augmented by the loader and/or `augmentation` (as in
    `fit`; None with cached features), and the frozen encoder runs at every step (once a step
    with SAM too: its second pass reuses the features of the first).
    """
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    if cached:
        batches = prepare.TensorBatches(cls_features(model, batches), stage_cfg["batch_size"], stage_cfg["seed"])
    model.eval()
    model.head.train()
    sam = recipes.uses_sam(stage_cfg["recipe"])
    first = {"step": None, "features": None}  # with SAM: the step's first pass, which its second repeats

    def step_loss(x, labels, step):
        again = sam and first["step"] == step  # SAM's second pass
        if not cached:
            if again:
                x = first["features"]
            else:
                with torch.no_grad():
                    x = encode(model, x)
        if sam:
            first.update(step=step, features=None if cached else x)
        if again:  # the head's batch norm normalises by the batch but updates its statistics once a step
            with buffers_kept(model.head):
                return classification_loss(model.head(x), labels, stage_cfg["recipe"]["label_smoothing"])
        return classification_loss(model.head(x), labels, stage_cfg["recipe"]["label_smoothing"])

    if record is not None:
        record.watch(model)
    torch.manual_seed(stage_cfg["seed"])
    groups = optim.param_groups(model, stage_cfg["weight_decay"])
    history = fit(groups, step_loss, batches, stage_cfg, desc="linear probe", record=record,
                  augmentation=augmentation)
    model.eval()
    return history


def downstream(mae_state: dict, arch: dict, num_classes: int, batches, stage_cfg: dict, *, head: str, device="cpu",
               cached: bool = True, record=None, augmentation=None):
    """Linear probe or fine-tune (globally pooled when `stage_cfg['global_pool']`) on top of an MAE
    encoder (see `linear_probe` for `batches` and `cached`); `stage_cfg` as `recipes.resolve` gives it.
    Returns (model, history)."""
    torch.manual_seed(stage_cfg["seed"])  # the head's initialisation
    model = build_classifier(arch, num_classes, head, stage_cfg.get("global_pool", False), stage_cfg["recipe"]["drop_path"])
    load_encoder(model, {k: v.cpu() for k, v in mae_state.items()}, timm_arch=is_timm(arch))
    model.to(device)
    if head == "probe":
        history = linear_probe(model, batches, stage_cfg, cached, record, augmentation)
    else:
        history = train_classifier(model, batches, stage_cfg, desc="fine-tune", record=record, augmentation=augmentation)
    return model, history
