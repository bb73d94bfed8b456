"""The RC-MAE step: an EMA teacher of the whole MAE gives a consistency target.

The teacher sees the same images and the same mask as the student; the consistency loss
is the per-patch MSE between the two predictions, averaged over the masked patches only,
and added to the MAE loss with `consistency_weight`. After every optimiser step the
teacher moves towards the student: `teacher = m * teacher + (1 - m) * student`.
"""
import math

import torch


def ema_momentum(step: int, total: int, base: float, schedule: str) -> float:
    """Constant, or cosine from `base` at step 0 to 1 at the last step."""
    if schedule == "constant":
        return base
    return 1 - (1 - base) * (math.cos(math.pi * step / max(1, total)) + 1) / 2


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, momentum: float) -> None:
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


def step_loss(student, teacher, images, mask_ratio: float, noise, consistency_weight: float):
    """MAE loss + consistency_weight * consistency loss for one batch (the student's graph)."""
    return step_losses(student, teacher, images, mask_ratio, noise, consistency_weight)[0]


@torch.no_grad()
def teacher_prediction(teacher, images, mask_ratio: float, noise) -> torch.Tensor:
    """The teacher's per-patch prediction under the student's mask (`noise`), the consistency target."""
    return teacher(images, mask_ratio, noise)[1]


def step_losses(student, teacher, images, mask_ratio: float, noise, consistency_weight: float, target=None):
    """(MAE loss + consistency_weight * consistency loss with the student's graph, then the MAE
    loss and the consistency loss detached, for the training curve). `target`: the teacher's
    prediction (`teacher_prediction`) when the caller has it already (SAM's second pass)."""
    loss, pred, mask = student(images, mask_ratio, noise)
    if target is None:
        with torch.no_grad():
            _, target, _ = teacher(images, mask_ratio, noise)  # the student's mask
    consistency = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    return loss + consistency_weight * consistency, loss.detach(), consistency.detach()
