"""The contrastive objective of a MoCo v3 model: the symmetrised InfoNCE loss on fixed views.

The analogue of the pretext loss's fixed masks:
- two augmented views of every evaluation image, made once from `landscape.view_seed` on the
  CPU (the whole subset in one pass of one generator, so a view does not depend on tiles,
  batch size or device);
- the keys of the momentum encoder at the checkpoint's weights, computed once: the landscape
  moves only the online parameters (base encoder, projector, predictor);
- a fixed partition of the subset into batches of `landscape.batch_size`: an image's
  negatives are the other keys of its batch, so the batch size is part of this objective's
  definition (it enters its config hash; the other objectives do not depend on it);
- BatchNorm (projector, predictor) in eval mode, as every landscape runs the model.

L(theta) = sum over images i of [ctr_i(q1, k2) + ctr_i(q2, k1)] / N, ctr_i the per-query term
of `mocov3.contrastive_terms`; with equal batches, the mean over batches of MoCo v3's loss.
"""
import torch

from vitlandscape.augment.twoview import two_views
from vitlandscape.models import mocov3


def fixed_views(images: torch.Tensor, view_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views of every (normalised) image, drawn on the CPU, moved to the images' device."""
    v1, v2 = two_views(images.cpu(), generator=torch.Generator().manual_seed(view_seed))
    return v1.to(images.device), v2.to(images.device)


@torch.inference_mode()
def batches(model: mocov3.MoCoV3, images: torch.Tensor, batch_size: int, view_seed: int) -> list:
    """[(view 1, view 2, keys of view 1, keys of view 2)] per batch of the fixed partition."""
    model.eval()
    v1, v2 = fixed_views(images, view_seed)
    out = []
    for i in range(0, len(images), batch_size):
        a, b = v1[i:i + batch_size], v2[i:i + batch_size]
        out.append((a, b, model.keys(a).float(), model.keys(b).float()))
    return out


def batch_sums(online: mocov3.Online, batch, temperature: float) -> tuple:
    """(the batch's loss terms summed in float64, its image count, 0); differentiable."""
    a, b, k1, k2 = batch
    q1, q2 = online(a), online(b)
    terms = mocov3.contrastive_terms(q1, k2, temperature) + mocov3.contrastive_terms(q2, k1, temperature)
    return terms.sum(dtype=torch.float64), len(a), 0
