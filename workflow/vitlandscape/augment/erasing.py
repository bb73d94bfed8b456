"""timm's random erasing (mode 'pixel', one rectangle), batched (see augment/common.py)."""
import math

import torch

from vitlandscape.augment.common import F64, check_generator, first_valid, offsets, uniform

# ---------------------------------------------------------------- random erasing

def erasing_boxes(batch: int, height: int, width: int, prob: float = 0.25, min_area: float = 0.02,
                  max_area: float = 1 / 3, min_aspect: float = 0.3, max_aspect: float | None = None, *,
                  generator: torch.Generator, attempts: int = 10):
    """timm RandomErasing's rectangle per image (count 1): erased with probability `prob`; up
    to `attempts` tries of area fraction ~ U(min_area, max_area), log aspect ~
    U(log min_aspect, log max_aspect), h = round(sqrt(area * aspect)),
    w = round(sqrt(area / aspect)), the first with h < height and w < width (strictly) taken
    at uniform integer offsets; none fitting erases nothing. Returns CPU int64 (top, left,
    h, w), h = w = 0 for images left alone."""
    check_generator(generator)
    max_aspect = max_aspect or 1 / min_aspect
    erase = torch.rand(batch, generator=generator, dtype=F64) < prob
    area = uniform((batch, attempts), min_area, max_area, generator) * (height * width)
    aspect = torch.exp(uniform((batch, attempts), math.log(min_aspect), math.log(max_aspect), generator))
    h = torch.round(torch.sqrt(area * aspect))
    w = torch.round(torch.sqrt(area / aspect))
    valid = (w < width) & (h < height)
    h, w = first_valid(valid, h, w)
    erase = erase & valid.any(1)
    top, left = offsets(height - h, generator), offsets(width - w, generator)
    h, w = torch.where(erase, h, 0.0), torch.where(erase, w, 0.0)
    return top.long(), left.long(), h.long(), w.long()


def _box_mask(top, left, h, w, height, width, device):
    """[B, height, width] bool: inside box i of image i."""
    rows = torch.arange(height, device=device).view(1, -1)
    cols = torch.arange(width, device=device).view(1, -1)
    top, left, h, w = (t.to(device).view(-1, 1) for t in (top, left, h, w))
    in_rows = (rows >= top) & (rows < top + h)
    in_cols = (cols >= left) & (cols < left + w)
    return in_rows.unsqueeze(2) & in_cols.unsqueeze(1)


def random_erasing(images: torch.Tensor, prob: float = 0.25, min_area: float = 0.02, max_area: float = 1 / 3,
                   min_aspect: float = 0.3, max_aspect: float | None = None, *,
                   generator: torch.Generator) -> torch.Tensor:
    """timm's RandomErasing(prob, mode='pixel', max_count=1) on normalised images: one
    rectangle (see erasing_boxes) per erased image filled with per-pixel, per-channel N(0, 1)
    values (drawn on the CPU for the erased images only, then moved to the device)."""
    batch, channels, height, width = images.shape
    boxes = erasing_boxes(batch, height, width, prob, min_area, max_area, min_aspect, max_aspect,
                          generator=generator)
    erased = (boxes[2] > 0).nonzero().squeeze(1)
    if len(erased) == 0:
        return images.clone()
    noise = torch.randn((len(erased), channels, height, width), generator=generator)
    mask = _box_mask(*(t[erased] for t in boxes), height, width, images.device).unsqueeze(1)
    out = images.clone()
    index = erased.to(images.device)
    out[index] = torch.where(mask, noise.to(images.device, images.dtype), images[index])
    return out
