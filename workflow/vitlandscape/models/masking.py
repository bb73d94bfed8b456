"""Random patch masking (the official MAE rule) and the fixed evaluation masks.

A mask is drawn from per-patch uniform noise: the `int(L * (1 - ratio))` patches with the
smallest noise are kept. Evaluation noise comes from one seeded generator for the whole
evaluation set, row i for image i, so the mask of an image never depends on the batch it
lands in, the tiling of a landscape grid or the device.
"""
import torch


def num_kept(num_patches: int, mask_ratio: float) -> int:
    return int(num_patches * (1 - mask_ratio))


def eval_noise(num_images: int, num_patches: int, seed: int) -> torch.Tensor:
    """[num_images, num_patches] uniform noise, fixed by `seed` (CPU generator)."""
    return torch.rand(num_images, num_patches, generator=torch.Generator().manual_seed(seed))


def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
    """Keep the lowest-noise patches of x [N, L, D].

    Returns (x_kept [N, keep, D], mask [N, L] with 1 = removed, ids_restore [N, L]).
    """
    n, length, dim = x.shape
    keep = num_kept(length, mask_ratio)
    if noise is None:
        noise = torch.rand(n, length, device=x.device)
    ids_shuffle = torch.argsort(noise.to(x.device), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(n, length, device=x.device, dtype=x.dtype)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_kept, mask, ids_restore
