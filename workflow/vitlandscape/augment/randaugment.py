"""timm's RandAugment ('inc1' ops), batched (see augment/common.py): the ops, their levels,
the per-image draws and their application.

What differs from the PIL original: rand_augment works on the uint8 grid as PIL does (images
quantised to k/255) and repeats PIL's arithmetic, its truncations, float32 blends and order
of double operations: on the test images its ops give timm's results level for level.
Images that no op touches are returned unchanged, not quantised. PosterizeIncreasing at
magnitude 10 keeps 0 bits (black), as the Pillow of the official recipes did (the installed
Pillow 13 raises).
"""
import math
from typing import NamedTuple

import torch

from vitlandscape.augment.common import F64, check_generator

# the fill colour of timm's create_transform for geometric ops: round(255 * ImageNet mean)
FILL_UINT8 = (124, 116, 104)
DEFAULT_FILL = tuple(v / 255 for v in FILL_UINT8)


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
    check_generator(generator)
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
