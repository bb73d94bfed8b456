"""What the landscape measures: L(theta) for one trained model on the fixed evaluation set.

pretext     MAE reconstruction loss with the fixed per-image masks of `mask_seed`
probe       cross-entropy (and top-1) of the linear-probed model
finetune    cross-entropy (and top-1) of the fine-tuned model
supervised  cross-entropy (and top-1) of the supervised ViT

`Objective.evaluate()` runs the model as its weights are now, so callers move the weights
in place and call it again; results do not depend on the batch size.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from vitlandscape import checkpoints, data
from vitlandscape.masking import eval_noise
from vitlandscape.models.arch import build_mae
from vitlandscape.models.classifier import build_classifier

CLASSIFICATION = ("probe", "finetune", "supervised")


@dataclass
class Objective:
    name: str
    model: torch.nn.Module
    batches: list = field(repr=False)
    info: dict = field(default_factory=dict)

    @torch.inference_mode()
    def evaluate(self) -> tuple[float, float]:
        """(loss, top-1 accuracy); accuracy is NaN for the pretext loss."""
        if self.name == "pretext":
            return self._pretext()
        return self._classification()

    def _pretext(self):
        model, ratio = self.model, self.info["mask_ratio"]
        # Sums stay on the device (float64 tensors from the first batch on): one
        # synchronisation per grid point, not one per batch.
        total = count = 0.0
        for images, noise, target in self.batches:
            latent, mask, ids_restore = model.forward_encoder(images, ratio, noise)
            pred = model.forward_decoder(latent, ids_restore)
            total = total + (model.patch_losses(images, pred, target) * mask).sum(dtype=torch.float64)
            count = count + mask.sum(dtype=torch.float64)
        return (total / count).item(), float("nan")

    def _classification(self):
        total, correct = 0.0, 0
        for images, labels in self.batches:
            logits = self.model(images).float()
            total = total + F.cross_entropy(logits, labels, reduction="sum").double()
            correct = correct + (logits.argmax(-1) == labels).sum()
        count = self.info["eval_samples"]
        return total.item() / count, correct.item() / count


def load_mae(path, model_cfg: dict) -> torch.nn.Module:
    """An MAE from our checkpoint or an official / RC-MAE release one (strict key match);
    `downstream_weights` picks teacher or student where the checkpoint holds both."""
    ckpt = checkpoints.load(path)
    state = checkpoints.state_dict_from(ckpt, path, prefer=model_cfg["downstream_weights"])
    model = build_mae(model_cfg["arch"], model_cfg["norm_pix_loss"])
    checkpoints.load_into(model, state, what=f"checkpoint {path}")
    return model


def load_model(objective: str, checkpoint, model_cfg: dict) -> torch.nn.Module:
    """The trained model behind an objective, in eval mode (strict key matching)."""
    if objective == "pretext":
        return load_mae(checkpoint, model_cfg).eval()
    if objective not in CLASSIFICATION:
        raise ValueError(f"unknown objective {objective!r}; use pretext, {', '.join(CLASSIFICATION)}")
    ckpt = checkpoints.load(checkpoint)
    if ckpt.get("kind") != "classifier":
        raise checkpoints.CheckpointError(
            f"checkpoint {checkpoint} is not a classifier (objective {objective} needs one)")
    model = build_classifier(ckpt["arch"], ckpt["num_classes"], ckpt["head"])
    checkpoints.load_into(model, ckpt["model"], what=f"checkpoint {checkpoint}")
    return model.eval()


def build(objective: str, checkpoint, model_cfg: dict, prepared: dict, batch_size: int,
          mask_seed: int, device: torch.device) -> Objective:
    """Model and evaluation batches, all on `device`, for one objective."""
    model = load_model(objective, checkpoint, model_cfg).to(device)
    images, labels = data.eval_set(prepared, device)
    info = {"eval_samples": len(images)}
    batches = []
    if objective == "pretext":
        noise = eval_noise(len(images), model.patch_embed.num_patches, mask_seed).to(device)
        info.update(mask_seed=mask_seed, mask_ratio=model_cfg["mask_ratio"])
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                x = images[i:i + batch_size]
                batches.append((x, noise[i:i + batch_size], model.targets(x)))
    else:
        batches = data.chunks(images, labels, batch_size)
    return Objective(objective, model, batches, info)
