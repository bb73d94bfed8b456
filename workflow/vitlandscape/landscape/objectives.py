"""What the landscape measures: L(theta) for one trained model on the fixed evaluation set.

pretext     MAE reconstruction loss with the fixed per-image masks of `mask_seed`
contrastive MoCo v3's symmetrised InfoNCE loss on the fixed views of `view_seed`, against the
            momentum encoder's fixed keys, in fixed batches of `batch_size` (landscape/contrastive.py)
probe       cross-entropy (and top-1) of the linear-probed model
finetune    cross-entropy (and top-1) of the fine-tuned model
supervised  cross-entropy (and top-1) of the supervised ViT

`Objective.evaluate()` runs the model as its weights are now, so callers move the weights
in place and call it again; results do not depend on the batch size.
"""
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from vitlandscape import devices
from vitlandscape.data import prepare
from vitlandscape.landscape import contrastive
from vitlandscape.models import mocov3
from vitlandscape.models.arch import build_mae, is_timm
from vitlandscape.models.classifier import build_classifier, classifier_for, timm_state
from vitlandscape.models.masking import eval_noise, random_masking
from vitlandscape.storage import checkpoints, formats
from vitlandscape.storage.outputs import checkpoint_identity

CLASSIFICATION = ("probe", "finetune", "supervised")
PRETRAINING = ("pretext", "contrastive")  # no labels: the loss is a mean over its own count


@dataclass
class Objective:
    name: str
    model: torch.nn.Module
    batches: list = field(repr=False)
    info: dict = field(default_factory=dict)
    # Turns a batch as stored into model input: uint8 images of a streamed data set are
    # normalised batch by batch, so the device holds the subset at 1 byte per pixel.
    inputs: Callable = field(default=lambda images: images, repr=False)
    precision: str = "fp32"  # of the forward passes of evaluate() (devices.precision)

    @torch.inference_mode()
    def evaluate(self) -> tuple[float, float]:
        """(loss, top-1 accuracy); accuracy is NaN for the pretext loss."""
        # Sums stay on the device (float64 tensors from the first batch on): one
        # synchronisation per grid point, not one per batch.
        total = count = correct = 0.0
        device = next(self.model.parameters()).device
        with devices.precision(self.precision, device):
            for batch in self.batches:
                loss_sum, n, right = self.batch_sums(batch)
                total, count, correct = total + loss_sum, count + n, correct + right
        if self.name in PRETRAINING:
            return (total / count).item(), float("nan")
        count = self.info["eval_samples"]
        return total.item() / count, correct.item() / count

    def batch_sums(self, batch) -> tuple:
        """(loss summed over the batch in float64, what it is averaged over, correct top-1)
        for one stored batch; differentiable when called outside inference mode. The
        objective's loss is the sum of the first entries over the sum of the second."""
        model = self.model
        if self.name == "contrastive":
            return contrastive.batch_sums(model, batch, self.info["temperature"])
        if self.name == "pretext":
            stored, noise, target = batch
            images = self.inputs(stored)
            latent, mask, ids_restore = model.forward_encoder(images, self.info["mask_ratio"], noise)
            pred = model.forward_decoder(latent, ids_restore)
            loss_sum = (model.patch_losses(images, pred, target) * mask).sum(dtype=torch.float64)
            return loss_sum, mask.sum(dtype=torch.float64), 0
        stored, labels = batch
        logits = model(self.inputs(stored))
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32, fp64 stays
        loss_sum = F.cross_entropy(logits, labels, reduction="sum").double()
        return loss_sum, len(labels), (logits.argmax(-1) == labels).sum()

    def zero_prediction_loss(self) -> float:
        """The pretext loss of a decoder that predicts 0 for every target patch: the mean
        squared (norm-pix) target over the masked patches. A trained MAE is far below it."""
        total = count = 0.0
        for stored, noise, target in self.batches:
            target = self.model.targets(self.inputs(stored)) if target is None else target
            _, mask, _ = random_masking(target, self.info["mask_ratio"], noise)  # the evaluation masks
            total = total + ((target ** 2).mean(-1) * mask).sum(dtype=torch.float64)
            count = count + mask.sum(dtype=torch.float64)
        return (total / count).item()


def model_for(ckpt: formats.Checkpoint, objective: str, model_cfg: dict) -> torch.nn.Module:
    """The (untrained) model a checkpoint's weights load into for an objective. Ours
    records its architecture and head; a released one takes the architecture from the
    config and the number of classes from its head."""
    formats.require(ckpt, objective)
    if objective == "pretext":
        return build_mae(model_cfg["arch"], model_cfg["norm_pix_loss"])
    if objective == "contrastive":
        return mocov3.from_config(model_cfg)
    if ckpt.format == "vitlandscape":
        meta = ckpt.meta
        return build_classifier(meta["arch"], meta["num_classes"], meta["head"], meta.get("global_pool", False))
    pooling = formats.POOLING[ckpt.format]
    head = ckpt.state["head.1.weight" if pooling == "probe" else "head.weight"]
    return classifier_for(pooling, model_cfg["arch"], head.shape[0])


def load(objective: str, checkpoint, model_cfg: dict) -> tuple[torch.nn.Module, formats.Checkpoint]:
    """The trained model behind an objective, in eval mode (strict key matching), and the
    checkpoint it came from (its format is provenance). `downstream_weights` picks teacher
    or student where the checkpoint holds both."""
    if objective not in PRETRAINING + CLASSIFICATION:
        raise ValueError(f"unknown objective {objective!r}; use {', '.join(PRETRAINING + CLASSIFICATION)}")
    ckpt = formats.read(checkpoint, prefer=model_cfg["downstream_weights"],
                        trusted=model_cfg.get("trust_checkpoint", False))
    model = model_for(ckpt, objective, model_cfg)
    checkpoints.load_into(model, fitted_state(model, ckpt, model_cfg), what=f"checkpoint {checkpoint} ({ckpt.label})")
    return model.eval(), ckpt


def fitted_state(model: torch.nn.Module, ckpt: formats.Checkpoint, model_cfg: dict) -> dict:
    """The checkpoint's weights for `model`: as stored (the whole MoCo v3 model for the
    contrastive objective), or, for a released checkpoint of a timm arch, through timm's
    checkpoint filter (position embeddings resampled to `arch.img_size`)."""
    if isinstance(model, mocov3.MoCoV3):
        return ckpt.meta["moco"]
    if ckpt.format != "vitlandscape" and is_timm(model_cfg["arch"]):
        return timm_state(model, ckpt.state)
    return ckpt.state


def load_model(objective: str, checkpoint, model_cfg: dict) -> torch.nn.Module:
    return load(objective, checkpoint, model_cfg)[0]


def build(objective: str, checkpoint, model_cfg: dict, prepared: dict, *, batch_size: int,
          mask_seed: int, device: torch.device, precision: str = "fp32", view_seed: int | None = None) -> Objective:
    """Model and evaluation batches, all on `device`, for one objective evaluated in `precision`."""
    model, ckpt = load(objective, checkpoint, model_cfg)
    print(f"checkpoint {checkpoint}: {ckpt.label}")
    images, labels = prepare.eval_set(prepared, device, normalised=False)
    built = from_model(objective, model.to(device), images, labels, batch_size, mask_seed, model_cfg["mask_ratio"],
                       view_seed, model_cfg.get("moco"))
    built.info["checkpoint_format"] = ckpt.format
    built.precision = precision
    return built


def for_stage(settings: dict, data_path, checkpoint, landscape, batch_size: int | None = None) -> Objective:
    """The objective of a landscape or metric stage (`settings` as its rule passes them, their
    `landscape` section as settings.LandscapeSettings) on the evaluation set of `data_path`."""
    return build(settings["objective"], checkpoint, settings, prepare.load_prepared(data_path),
                 batch_size=batch_size or landscape.batch_size, mask_seed=landscape.mask_seed,
                 device=devices.resolve(landscape.device), precision=landscape.precision, view_seed=landscape.view_seed)


def provenance(settings: dict, checkpoint, objective: Objective) -> dict:
    """What a result measured on `objective` records of where it comes from: the model, its
    method, the objective, the checkpoint (path, sha256, format) and the evaluation images."""
    return {"model": settings["name"], "method": settings["method"], "objective": settings["objective"],
            **checkpoint_identity(checkpoint, objective.info["checkpoint_format"]),
            "eval_samples": objective.info["eval_samples"]}


def from_model(objective: str, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
               batch_size: int, mask_seed: int = 0, mask_ratio: float = 0.75, view_seed: int | None = None,
               moco: dict | None = None) -> Objective:
    """The objective of a model already on the images' device: float images, or uint8 ones
    (a streamed subset) normalised batch by batch. `mask_*` only for the pretext loss;
    `view_seed` and `moco` (the model's MoCo v3 settings) only for the contrastive loss, whose
    `model` is the whole MoCo v3 model and whose Objective moves only its online part."""
    streamed = images.dtype == torch.uint8
    info = {"eval_samples": len(images)}
    if objective == "contrastive":
        if view_seed is None:
            raise ValueError("the contrastive objective needs landscape.view_seed")
        views = prepare.normalise(images) if streamed else images  # views are made once, from float images
        info["temperature"] = moco["temperature"]
        return Objective(objective, mocov3.Online(model), contrastive.batches(model, views, batch_size, view_seed), info)
    if objective != "pretext":
        batches = prepare.chunks(images, labels, batch_size)
    else:
        noise = eval_noise(len(images), model.patch_embed.num_patches, mask_seed).to(images.device)
        info.update(mask_seed=mask_seed, mask_ratio=mask_ratio)
        batches = []
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                x = images[i:i + batch_size]
                # Targets are cached for in-memory data; for a streamed (large) subset they
                # are recomputed per batch, which costs little next to the forward pass.
                batches.append((x, noise[i:i + batch_size], None if streamed else model.targets(x)))
    return Objective(objective, model, batches, info, inputs=prepare.normalise if streamed else (lambda x: x))
