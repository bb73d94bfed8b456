"""Random resized crop and horizontal flip, batched (see augment/common.py).

What differs from the PIL original: random_resized_crop resamples with PIL's own bicubic
resize weights (a = -0.5, the filter widened when downscaling, i.e. antialiased, and the
crop's edges taken as the image's edges), in float. PIL rounds to uint8, clipping to
[0, 255], after its first 1-D pass and at the end; here nothing is rounded or clipped
(bicubic ringing may pass the input's range slightly). On smooth uint8 images the two agree
within 1 level (about a fifth of the values off by 1); where PIL's intermediate clipping
cuts the overshoot of pixel-scale contrast (e.g. noise images), by up to ~20 levels of 255
there.
"""
import torch

from vitlandscape.augment.common import F64, check_generator, first_valid, offsets, uniform

# ---------------------------------------------------------------- random resized crop

def crop_boxes(batch: int, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), *,
               generator: torch.Generator, attempts: int = 10):
    """torchvision RandomResizedCrop.get_params for `batch` images of height x width, all at once.

    Each image tries `attempts` (area fraction ~ U(scale), log aspect ~ U(log ratio)) boxes,
    w = round(sqrt(area * r)), h = round(sqrt(area / r)), and takes the first with
    0 < w <= width and 0 < h <= height, at uniform integer offsets; with none, the centre crop
    of the whole image with its aspect ratio clamped to `ratio`.
    Returns CPU int64 tensors (top, left, h, w), each [batch].
    """
    check_generator(generator)
    log_ratio = torch.log(torch.tensor(ratio, dtype=F64))
    area = height * width * uniform((batch, attempts), scale[0], scale[1], generator)
    aspect = torch.exp(uniform((batch, attempts), log_ratio[0], log_ratio[1], generator))
    w = torch.round(torch.sqrt(area * aspect))  # round half to even, as Python's round
    h = torch.round(torch.sqrt(area / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    h, w = first_valid(valid, h, w)
    found = valid.any(1)
    top, left = offsets(height - h, generator), offsets(width - w, generator)

    fallback_h, fallback_w = _centre_crop_size(height, width, ratio)
    h = torch.where(found, h, float(fallback_h))
    w = torch.where(found, w, float(fallback_w))
    top = torch.where(found, top, float((height - fallback_h) // 2))
    left = torch.where(found, left, float((width - fallback_w) // 2))
    return top.long(), left.long(), h.long(), w.long()


def _centre_crop_size(height, width, ratio):
    """torchvision's fallback: the whole image, cut to the nearest allowed aspect ratio."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def _resize_filter(x):
    """PIL's bicubic resize filter (Keys, a = -0.5), support 2."""
    a = -0.5
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _resize_weights(start, length, in_size: int, out_size: int, device):
    """[B, out_size, in_size]: rows of PIL's resize weights mapping the span
    [start, start + length) of an axis onto out_size pixels (PIL's precompute_coeffs)."""
    start = start.to(device, F64).view(-1, 1, 1)
    length = length.to(device, F64).view(-1, 1, 1)
    step = length / out_size
    widen = step.clamp(min=1.0)  # downscaling widens the filter: PIL's antialiasing
    centre = start + (torch.arange(out_size, dtype=F64, device=device).view(1, -1, 1) + 0.5) * step
    pixel = torch.arange(in_size, dtype=F64, device=device).view(1, 1, -1) + 0.5
    weights = _resize_filter((pixel - centre) / widen)
    # PIL resizes the cropped image: pixels outside the box do not exist for it, and each
    # row is renormalised over the pixels that remain (this is its edge handling)
    weights = weights * ((pixel > start) & (pixel < start + length))
    return weights / weights.sum(-1, keepdim=True)


def resized_crop(images: torch.Tensor, top, left, height, width, size: int) -> torch.Tensor:
    """Crop box i (top[i], left[i], height[i], width[i]; integer tensors) of image i and resize
    it to size x size as PIL's bicubic Image.resize does (see the module notes): two batched
    matrix products with per-image weight matrices. Under TF32 matmul (CUDA) the products,
    hence the pixels, carry TF32's ~1e-3 relative precision."""
    _, _, img_h, img_w = images.shape
    rows = _resize_weights(top, height, img_h, size, images.device).to(images.dtype)
    cols = _resize_weights(left, width, img_w, size, images.device).to(images.dtype)
    return rows.unsqueeze(1) @ images @ cols.unsqueeze(1).transpose(-1, -2)


def random_resized_crop(images: torch.Tensor, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), *,
                        generator: torch.Generator) -> torch.Tensor:
    """torchvision's RandomResizedCrop(size, scale, ratio, bicubic) per image -> [B, C, size, size]."""
    batch, _, height, width = images.shape
    boxes = crop_boxes(batch, height, width, scale, ratio, generator=generator)
    return resized_crop(images, *boxes, size)


# ---------------------------------------------------------------- flip

def horizontal_flip(images: torch.Tensor, p: float = 0.5, *, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability p (RandomHorizontalFlip)."""
    check_generator(generator)
    flip = torch.rand(images.shape[0], generator=generator) < p
    return torch.where(flip.to(images.device).view(-1, 1, 1, 1), images.flip(-1), images)
