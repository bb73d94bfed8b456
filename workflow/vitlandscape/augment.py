"""The MAE / DeiT training augmentations, batched, on [B, C, H, W] float images on their device.

The official recipes transform one PIL image at a time: torchvision's RandomResizedCrop
(bicubic) and RandomHorizontalFlip, timm's RandAugment 'rand-m9-mstd0.5-inc1' (as timm's
create_transform sets it up: bicubic, fill colour the ImageNet mean) and, after
normalisation, timm's RandomErasing(0.25, mode='pixel', max_count=1). Here each works on a
whole batch without a Python loop over its images: every random choice is drawn up front on
the CPU from the `generator` passed in (a CPU torch.Generator), in a fixed order, then moved
to the images' device, so the same generator state gives bit-identical output on a device.
Loops run only over attempts, op kinds and filter taps.

What differs from the PIL originals:
- random_resized_crop resamples with PIL's own bicubic resize weights (a = -0.5, the filter
  widened when downscaling, i.e. antialiased, and the crop's edges taken as the image's
  edges), in float. PIL rounds to uint8, clipping to [0, 255], after its first 1-D pass and
  at the end; here nothing is rounded or clipped (bicubic ringing may pass the input's range
  slightly). On smooth uint8 images the two agree within 1 level (about a fifth of the
  values off by 1); where PIL's intermediate clipping cuts the overshoot of pixel-scale
  contrast (e.g. noise images), by up to ~20 levels of 255 there.
- rand_augment works on the uint8 grid as PIL does (images quantised to k/255) and repeats
  PIL's arithmetic, its truncations, float32 blends and order of double operations: on the
  test images its ops give timm's results level for level. Images that no op touches are
  returned unchanged, not quantised. PosterizeIncreasing at magnitude 10 keeps 0 bits
  (black), as the Pillow of the official recipes did (the installed Pillow 13 raises).
- Random draws follow the originals' distributions, not their random streams (Python's
  `random` and numpy there); an image's parameters are all drawn even when not used.
"""
import math
from typing import NamedTuple

import torch

F64 = torch.float64

# the fill colour of timm's create_transform for geometric ops: round(255 * ImageNet mean)
FILL_UINT8 = (124, 116, 104)
DEFAULT_FILL = tuple(v / 255 for v in FILL_UINT8)


def _check_generator(generator):
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ValueError("augmentations draw from a CPU torch.Generator passed as `generator`")


def _uniform(shape, low, high, generator):
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=F64)


def _first_valid(valid, *values):
    """Per row, the values at the first True column of `valid` (column 0 where none)."""
    first = valid.to(torch.uint8).argmax(1, keepdim=True)
    return [v.gather(1, first).squeeze(1) for v in values]


def _offsets(room, generator):
    """A uniform integer in [0, room] per element (room >= 0), as randint(0, room)."""
    return torch.floor(torch.rand(room.shape, generator=generator, dtype=F64) * (room + 1))


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
    _check_generator(generator)
    log_ratio = torch.log(torch.tensor(ratio, dtype=F64))
    area = height * width * _uniform((batch, attempts), scale[0], scale[1], generator)
    aspect = torch.exp(_uniform((batch, attempts), log_ratio[0], log_ratio[1], generator))
    w = torch.round(torch.sqrt(area * aspect))  # round half to even, as Python's round
    h = torch.round(torch.sqrt(area / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    h, w = _first_valid(valid, h, w)
    found = valid.any(1)
    top, left = _offsets(height - h, generator), _offsets(width - w, generator)

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
    _check_generator(generator)
    flip = torch.rand(images.shape[0], generator=generator) < p
    return torch.where(flip.to(images.device).view(-1, 1, 1, 1), images.flip(-1), images)


# ---------------------------------------------------------------- RandAugment ops
# Each op takes q, [b, 3, H, W] float32 holding uint8 values (0..255) as PIL works on, its
# per-image argument [b] (float64, on the CPU: matrices are built there, so that a batch on
# any device gets the same ones) and the fill colour [3] (0..255, on q's device).

def _per_image(arg, q):
    """[b] argument -> [b, 1, 1, 1] on q's device and dtype."""
    return arg.to(q.device, q.dtype).view(-1, 1, 1, 1)


def _luma(q):
    """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 2^15) >> 16 (exact in float64)."""
    r, g, b = q.double().unbind(1)
    return torch.floor((r * 19595 + g * 38470 + b * 7471 + 32768) / 65536)


def _blend(degenerate, q, factor):
    """PIL's Image.blend(degenerate, q, factor) = ImageEnhance's enhance(factor): computed in
    float32 (PIL passes the factor as a C float), clipped, truncated to uint8."""
    alpha = factor.float().to(q.device).view(-1, 1, 1, 1)
    degenerate = degenerate.float()
    return (degenerate + alpha * (q.float() - degenerate)).clamp(0, 255).floor()


def _auto_contrast(q, _arg, _fill):
    """ImageOps.autocontrast: stretch each channel's [min, max] to [0, 255] (a LUT, truncated)."""
    lo = q.amin((-2, -1), keepdim=True).double()
    hi = q.amax((-2, -1), keepdim=True).double()
    # torch turns `255.0 / t` into 255.0 * (1 / t), off by an ulp from Python's division
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp(min=1)
    stretched = torch.trunc(q.double() * scale + (-lo * scale)).clamp(0, 255)
    return torch.where(hi > lo, stretched, q.double()).to(q.dtype)


def _equalize(q, _arg, _fill):
    """ImageOps.equalize: per channel, lut[i] = (step // 2 + #pixels below i) // step with
    step = (#pixels - #pixels at the top value) // 255; identity when step is 0 or one value."""
    b, c, h, w = q.shape
    values = q.reshape(b * c, h * w).long()
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=q.device)
    hist.scatter_add_(1, values, torch.ones_like(values))
    top_value = 255 - hist.flip(1).ne(0).to(torch.uint8).argmax(1)
    step = (h * w - hist.gather(1, top_value[:, None]).squeeze(1)) // 255
    below = hist.cumsum(1) - hist
    lut = ((step // 2)[:, None] + below).div(step.clamp(min=1)[:, None], rounding_mode="floor")
    lut = lut.clamp(max=255)  # PIL clips LUT entries to uint8
    identity = (hist.ne(0).sum(1) <= 1) | (step == 0)
    lut = torch.where(identity[:, None], torch.arange(256, device=q.device), lut)
    return lut.gather(1, values).reshape(b, c, h, w).to(q.dtype)


def _invert(q, _arg, _fill):
    return 255 - q


def _posterize(q, bits, _fill):
    """Keep the `bits` high bits (ImageOps.posterize); 0 bits gives black."""
    unit = _per_image(torch.pow(2.0, 8 - bits), q)
    return torch.floor(q / unit) * unit


def _solarize(q, threshold, _fill):
    return torch.where(q < _per_image(threshold, q), q, 255 - q)


def _solarize_add(q, add, _fill):
    """timm's solarize_add: values below 128 raised by `add`, capped at 255."""
    return torch.where(q < 128, (q + _per_image(add, q)).clamp(max=255), q)


def _color(q, factor, _fill):
    return _blend(_luma(q).unsqueeze(1).expand_as(q), q, factor).to(q.dtype)


def _contrast(q, factor, _fill):
    """Blend with the image's mean grey level int(mean(L) + 0.5) (ImageEnhance.Contrast)."""
    total = _luma(q).sum((-2, -1))  # exact: a sum of integers
    # divided as Python does (a CUDA `t / n` multiplies by 1 / n and can miss k + 0.5)
    mean = torch.floor(total / torch.full_like(total, q.shape[-2] * q.shape[-1]) + 0.5).view(-1, 1, 1, 1)
    return _blend(mean.expand_as(q), q, factor).to(q.dtype)


def _brightness(q, factor, _fill):
    return _blend(torch.zeros_like(q), q, factor).to(q.dtype)


def _smooth(q):
    """PIL's ImageFilter.SMOOTH (3x3 kernel [1 1 1; 1 5 1; 1 1 1] / 13, float32, rounded),
    edge pixels copied unchanged, with PIL's order of float32 operations."""
    edge = torch.tensor(1.0, dtype=torch.float32) / 13
    centre = torch.tensor(5.0, dtype=torch.float32) / 13
    q = q.float()

    def row(r, middle):
        return (r[..., :-2] * edge + r[..., 1:-1] * middle) + r[..., 2:] * edge

    total = 0.5 + row(q[..., 2:, :], edge)
    total = total + row(q[..., 1:-1, :], centre)
    total = total + row(q[..., :-2, :], edge)
    smooth = q.clone()
    smooth[..., 1:-1, 1:-1] = total.clamp(0, 255).floor()
    return smooth


def _sharpness(q, factor, _fill):
    return _blend(_smooth(q), q, factor).to(q.dtype)


def _cubic(v1, v2, v3, v4, d):
    """PIL's transform bicubic (Keys, a = -1) through v1..v4 at d in [0, 1) past v2, in the
    order of operations of PIL's Geometry.c, so that the truncation to uint8 agrees."""
    p2 = -v1 + v3
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def _affine(q, matrix, fill):
    """PIL's Image.transform(AFFINE, matrix, BICUBIC, fillcolor=fill): output pixel centre
    (x, y) samples the input at (a x + b y + c, d x + e y + f) (matrix [b, 6], float64);
    samples outside the input take the fill colour, the 4x4 neighbourhood is clamped at the
    edges, and the result is clipped and truncated to uint8."""
    b, c, h, w = q.shape
    device = q.device
    m = matrix.to(device, F64).view(b, 6, 1, 1).unbind(1)
    x_out = torch.arange(w, dtype=F64, device=device).view(1, 1, w) + 0.5
    y_out = torch.arange(h, dtype=F64, device=device).view(1, h, 1) + 0.5
    x_in = m[0] * x_out + m[1] * y_out + m[2]
    y_in = m[3] * x_out + m[4] * y_out + m[5]
    inside = (x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)

    x_in, y_in = x_in - 0.5, y_in - 0.5  # to pixel indices
    x0, y0 = torch.floor(x_in), torch.floor(y_in)
    dx, dy = (x_in - x0).unsqueeze(1), (y_in - y0).unsqueeze(1)
    cols = [(x0 + k - 1).clamp(0, w - 1).long() for k in range(4)]
    rows = [(y0 + k - 1).clamp(0, h - 1).long() * w for k in range(4)]
    flat = q.reshape(b, c, h * w).double()

    def tap(row, col):
        index = (row + col).view(b, 1, h * w).expand(b, c, h * w)
        return flat.gather(2, index).view(b, c, h, w)

    across = [_cubic(*(tap(row, col) for col in cols), dx) for row in rows]
    value = _cubic(*across, dy).clamp(0, 255).floor().to(q.dtype)
    return torch.where(inside.unsqueeze(1), value, fill.to(q.dtype).view(1, c, 1, 1))


def _unit_matrix(batch):
    return torch.tensor([1.0, 0, 0, 0, 1, 0], dtype=F64).repeat(batch, 1)


def _rotate(q, degrees, fill):
    """Image.rotate(degrees) about the image centre (PIL's matrix, rounded to 15 decimals)."""
    h, w = q.shape[-2:]
    angle = -(torch.remainder(degrees, 360.0) * (math.pi / 180.0))
    cos = torch.round(torch.cos(angle) * 1e15) / 1e15
    sin = torch.round(torch.sin(angle) * 1e15) / 1e15
    cx, cy = w / 2.0, h / 2.0
    c = cos * -cx + sin * -cy + 0.0 + cx
    f = -sin * -cx + cos * -cy + 0.0 + cy
    return _affine(q, torch.stack([cos, sin, c, -sin, cos, f], 1), fill)


def _shear_x(q, factor, fill):
    matrix = _unit_matrix(len(factor))
    matrix[:, 1] = factor
    return _affine(q, matrix, fill)


def _shear_y(q, factor, fill):
    matrix = _unit_matrix(len(factor))
    matrix[:, 3] = factor
    return _affine(q, matrix, fill)


def _translate_x(q, fraction, fill):
    """timm's translate_x_rel: shift by fraction * width pixels (sub-pixel, bicubic)."""
    matrix = _unit_matrix(len(fraction))
    matrix[:, 2] = fraction * q.shape[-1]
    return _affine(q, matrix, fill)


def _translate_y(q, fraction, fill):
    matrix = _unit_matrix(len(fraction))
    matrix[:, 5] = fraction * q.shape[-2]
    return _affine(q, matrix, fill)


# ---------------------------------------------------------------- RandAugment levels
# timm's level -> argument mappings for a magnitude m in [0, 10] (float64, same arithmetic
# order as timm), and the random sign where timm negates (`negate`).

def _signed(value, negate):
    return torch.where(negate, -value, value)


def _no_arg(m, _negate):
    return torch.zeros_like(m)


def _rotate_level(m, negate):
    return _signed(m / 10 * 30.0, negate)


def _posterize_increasing_level(m, _negate):
    return 4 - torch.trunc(m / 10 * 4)


def _solarize_increasing_level(m, _negate):
    return 256 - torch.trunc(m / 10 * 256).clamp(max=256)


def _solarize_add_level(m, _negate):
    return torch.trunc(m / 10 * 110).clamp(max=128)


def _enhance_increasing_level(m, negate):
    return (1.0 + _signed(m / 10 * 0.9, negate)).clamp(min=0.1)


def _shear_level(m, negate):
    return _signed(m / 10 * 0.3, negate)


def _translate_rel_level(m, negate):
    return _signed(m / 10 * 0.45, negate)


# timm's _RAND_INCREASING_TRANSFORMS ('inc1'), in timm's order: name -> (level, op)
RAND_INCREASING_OPS = {
    "AutoContrast": (_no_arg, _auto_contrast),
    "Equalize": (_no_arg, _equalize),
    "Invert": (_no_arg, _invert),
    "Rotate": (_rotate_level, _rotate),
    "PosterizeIncreasing": (_posterize_increasing_level, _posterize),
    "SolarizeIncreasing": (_solarize_increasing_level, _solarize),
    "SolarizeAdd": (_solarize_add_level, _solarize_add),
    "ColorIncreasing": (_enhance_increasing_level, _color),
    "ContrastIncreasing": (_enhance_increasing_level, _contrast),
    "BrightnessIncreasing": (_enhance_increasing_level, _brightness),
    "SharpnessIncreasing": (_enhance_increasing_level, _sharpness),
    "ShearX": (_shear_level, _shear_x),
    "ShearY": (_shear_level, _shear_y),
    "TranslateXRel": (_translate_rel_level, _translate_x),
    "TranslateYRel": (_translate_rel_level, _translate_y),
}
OP_NAMES = tuple(RAND_INCREASING_OPS)


class RandAugmentParams(NamedTuple):
    """Per image and layer ([B, num_ops], CPU): op index into OP_NAMES, whether applied, the
    magnitude (after noise and clipping) and whether its argument is negated."""
    op: torch.Tensor
    applied: torch.Tensor
    magnitude: torch.Tensor
    negate: torch.Tensor


def rand_augment_params(batch: int, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5,
                        prob: float = 0.5, *, generator: torch.Generator,
                        magnitude_max: float = 10.0) -> RandAugmentParams:
    """timm's RandAugment draws for `batch` images: num_ops ops each, uniformly with
    replacement; each applied with probability `prob`; magnitude ~ N(magnitude, std)
    (U(0, magnitude) for an infinite std, fixed for std <= 0) clipped to [0, magnitude_max];
    a fair coin for the sign of the ops timm negates."""
    _check_generator(generator)
    shape = (batch, num_ops)
    op = torch.randint(len(OP_NAMES), shape, generator=generator)
    applied = torch.rand(shape, generator=generator, dtype=F64) < prob
    noise = torch.randn(shape, generator=generator, dtype=F64)
    uniform = torch.rand(shape, generator=generator, dtype=F64)
    if magnitude_std == math.inf:
        drawn = uniform * magnitude
    elif magnitude_std > 0:
        drawn = magnitude + magnitude_std * noise
    else:
        drawn = torch.full(shape, float(magnitude), dtype=F64)
    negate = torch.rand(shape, generator=generator, dtype=F64) > 0.5
    return RandAugmentParams(op, applied, drawn.clamp(0.0, magnitude_max), negate)


def _to_uint8_grid(images):
    """[0, 1] images -> float32 holding the nearest uint8 values, the values PIL works on."""
    return torch.round(images.float() * 255).clamp(0, 255)


def _fill_uint8(fill, device):
    return torch.round(torch.tensor(fill, dtype=torch.float32) * 255).to(device)


def _check_rgb(images):
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"RandAugment takes RGB images [B, 3, H, W]; got shape {tuple(images.shape)}")


def _apply(q, name, magnitude, negate, fill):
    """Op `name` at per-image magnitudes [b] / signs [b] (CPU) on uint8-valued q [b, 3, H, W]."""
    level, op = RAND_INCREASING_OPS[name]
    return op(q, level(magnitude, negate), fill)


def augment_op(images: torch.Tensor, name: str, magnitude: float, negate: bool = False,
               fill=DEFAULT_FILL) -> torch.Tensor:
    """One RandAugment op (a name of OP_NAMES) at a fixed magnitude on every image in [0, 1],
    as timm's AugmentOp(name, prob=1, magnitude) with the given sign; result on the uint8 grid."""
    _check_rgb(images)
    batch = images.shape[0]
    q = _apply(_to_uint8_grid(images), name, torch.full((batch,), float(magnitude), dtype=F64),
               torch.full((batch,), bool(negate)), _fill_uint8(fill, images.device))
    return (q / 255).to(images.dtype)


def rand_augment(images: torch.Tensor, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5,
                 prob: float = 0.5, *, generator: torch.Generator, fill=DEFAULT_FILL,
                 magnitude_max: float = 10.0) -> torch.Tensor:
    """timm's RandAugment ('rand-m{magnitude}-n{num_ops}-mstd{magnitude_std}-inc1', p=prob) on
    RGB images in [0, 1] (not normalised): per image, num_ops ops in sequence, each applied
    with probability prob. Geometric ops fill with `fill` (timm's create_transform: the
    ImageNet mean as uint8 / 255). An image that draws at least one applied op comes back on
    the uint8 grid (k / 255), as from PIL; the others come back unchanged."""
    _check_rgb(images)
    params = rand_augment_params(images.shape[0], num_ops, magnitude, magnitude_std, prob,
                                 generator=generator, magnitude_max=magnitude_max)
    fill = _fill_uint8(fill, images.device)
    q = _to_uint8_grid(images)
    for layer in range(num_ops):
        for kind, name in enumerate(OP_NAMES):
            chosen = params.applied[:, layer] & (params.op[:, layer] == kind)
            if not chosen.any():
                continue
            index = chosen.nonzero().squeeze(1)
            on_device = index.to(images.device)
            q[on_device] = _apply(q[on_device], name, params.magnitude[index, layer],
                                  params.negate[index, layer], fill)
    touched = params.applied.any(1).to(images.device).view(-1, 1, 1, 1)
    return torch.where(touched, (q / 255).to(images.dtype), images)


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
    _check_generator(generator)
    max_aspect = max_aspect or 1 / min_aspect
    erase = torch.rand(batch, generator=generator, dtype=F64) < prob
    area = _uniform((batch, attempts), min_area, max_area, generator) * (height * width)
    aspect = torch.exp(_uniform((batch, attempts), math.log(min_aspect), math.log(max_aspect), generator))
    h = torch.round(torch.sqrt(area * aspect))
    w = torch.round(torch.sqrt(area / aspect))
    valid = (w < width) & (h < height)
    h, w = _first_valid(valid, h, w)
    erase = erase & valid.any(1)
    top, left = _offsets(height - h, generator), _offsets(width - w, generator)
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
