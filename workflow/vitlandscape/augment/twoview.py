"""MoCo v3's two views of each image (BYOL's asymmetric recipe, as facebookresearch/moco-v3's
main_moco.py sets it up), batched on the batch's device (see augment/common.py).

Per image and view: RandomResizedCrop(side, scale=crop_scale), ColorJitter(0.4, 0.4, 0.2, 0.1)
with p = 0.8, RandomGrayscale(p = 0.2), GaussianBlur(sigma ~ U(0.1, 2.0)) with p = 1.0 (view
1) or 0.1 (view 2), Solarize(128) with p = 0 (view 1) or 0.2 (view 2), horizontal flip
(p = 0.5). The jitter applies its four ops in a random order drawn per image, as
torchvision's ColorJitter does (a uniform permutation of brightness, contrast, saturation,
hue); brightness and contrast factors ~ U(0.6, 1.4), saturation ~ U(0.8, 1.2), hue shift
~ U(-0.1, 0.1) of a turn.

As moco-v3 works on PIL images, the views work on the uint8 grid from the crop on (PIL's crop
returns uint8): brightness, contrast and saturation are randaugment.py's ImageEnhance ops,
grayscale PIL's RGB -> L, solarize ImageOps.solarize, level for level. What differs from
moco-v3's PIL pipeline:
- the crop is crop.py's (PIL's bicubic; torchvision's default there is bilinear), rounded to
  the uint8 grid;
- hue rotates the hue exactly in float HSV (torchvision's tensor adjust_hue), rounded to the
  nearest level, where PIL rotates an 8-bit HSV image;
- the blur is a separable Gaussian kernel of BYOL's size rule (`blur_kernel_size`: 23 px at
  224) with reflect padding, as torchvision's tensor gaussian_blur, in float and not rounded,
  where moco-v3 uses PIL's GaussianBlur(radius=sigma) (box-blur passes, the whole image);
  sigma is in pixels at any image size, as in the recipe.
"""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from vitlandscape.augment import crop, randaugment
from vitlandscape.augment.common import F64, check_generator, uniform
from vitlandscape.data import common

JITTER_P, GREY_P, FLIP_P = 0.8, 0.2, 0.5
BRIGHTNESS, CONTRAST, SATURATION, HUE = (0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)
SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 128.0  # on 0..255: 0.5 on [0, 1]
# (blur probability, solarize probability) of view 1 and view 2
VIEWS = ((1.0, 0.0), (0.1, 0.2))


# ---------------------------------------------------------------- ops
# On q [b, 3, H, W] float32 holding 0..255 values (randaugment.py's convention), with a
# per-image argument [b] (float64, CPU).

def _rgb_to_hsv(x):
    """[b, 3, H, W] RGB in [0, 1] -> h (turns, [0, 1)), s, v, each [b, H, W]."""
    r, g, b = x.unbind(1)
    v = x.amax(1)
    delta = v - x.amin(1)
    chromatic = delta > 0
    s = torch.where(v > 0, delta / torch.where(v > 0, v, 1.0), 0.0)
    safe = torch.where(chromatic, delta, 1.0)
    # position on the hexagon: 0 at red, 2 at green, 4 at blue
    h = torch.where(v == r, (g - b) / safe, torch.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = torch.where(chromatic, torch.remainder(h / 6, 1.0), 0.0)
    return h, s, v


# the (r, g, b) of each hue sextant, as indices into (v, t, p, q) of _hsv_to_rgb
_SEXTANTS = torch.tensor([[0, 1, 2], [3, 0, 2], [2, 0, 1], [2, 3, 0], [1, 2, 0], [0, 2, 3]])


def _hsv_to_rgb(h, s, v):
    sextant = torch.floor(h * 6)
    f = h * 6 - sextant
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    candidates = torch.stack([v, t, p, q], 1)  # [b, 4, H, W]
    index = _SEXTANTS.to(h.device)[torch.remainder(sextant, 6).long()]  # [b, H, W, 3]
    return candidates.gather(1, index.permute(0, 3, 1, 2))


def _hue(q, shift, _fill=None):
    """torchvision's adjust_hue(hue_factor=shift): the hue rotated by `shift` turns in HSV
    (float32), rounded back to the nearest uint8 level."""
    h, s, v = _rgb_to_hsv(q.float() / 255)
    h = torch.remainder(h + shift.to(q.device, h.dtype).view(-1, 1, 1), 1.0)
    return torch.round(_hsv_to_rgb(h, s, v) * 255).clamp(0, 255).to(q.dtype)


# ColorJitter's ops, in torchvision's numbering (its fn_idx): op(q, per-image argument, fill)
JITTER_OPS = (("brightness", randaugment._brightness), ("contrast", randaugment._contrast),
              ("saturation", randaugment._color), ("hue", _hue))


def grayscale(q):
    """PIL's convert('L') back to 3 channels."""
    return randaugment._luma(q).to(q.dtype).unsqueeze(1).expand_as(q)


def solarize(q):
    """ImageOps.solarize(threshold=128): values >= 128 inverted."""
    return randaugment._solarize(q, torch.full((q.shape[0],), SOLARIZE_THRESHOLD, dtype=F64), None)


def blur_kernel_size(side: int) -> int:
    """BYOL's kernel, about a tenth of the side, odd: 2 * round(side / 20) + 1 (224 -> 23,
    32 -> 5, 16 -> 3; round half up)."""
    return 2 * math.floor(side / 20 + 0.5) + 1


def gaussian_kernels(sigma, size: int):
    """[b, size] float64: exp(-x^2 / (2 sigma^2)) at x = -(size - 1) / 2 .. (size - 1) / 2, summing to 1."""
    x = torch.arange(size, dtype=F64) - (size - 1) / 2
    weights = torch.exp(-0.5 * (x / sigma.to(F64).view(-1, 1)) ** 2)
    return weights / weights.sum(1, keepdim=True)


def gaussian_blur(q, sigma, size: int):
    """Each image blurred with its own sigma [b] by a separable size x size Gaussian kernel,
    reflect padding (torchvision's gaussian_blur); not rounded."""
    if size == 1:
        return q
    radius = size // 2
    weights = gaussian_kernels(sigma, size).to(q.device, q.dtype)
    height, width = q.shape[-2:]
    padded = F.pad(q, (radius, radius, radius, radius), mode="reflect")
    rows = torch.zeros_like(padded[..., :height, :])
    for tap in range(size):
        rows = rows + weights[:, tap].view(-1, 1, 1, 1) * padded[..., tap:tap + height, :]
    out = torch.zeros_like(q)
    for tap in range(size):
        out = out + weights[:, tap].view(-1, 1, 1, 1) * rows[..., tap:tap + width]
    return out


# ---------------------------------------------------------------- draws

class ViewParams(NamedTuple):
    """One view's draws per image (CPU, [B] unless noted): crop box, whether the jitter
    applies, its order ([B, 4]: order[i, k] is the index into JITTER_OPS of image i's k-th
    op), its four arguments, grayscale, blur and its sigma, solarize, flip."""
    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    jitter: torch.Tensor
    order: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    grey: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor
    flip: torch.Tensor

    def jitter_args(self):
        return (self.brightness, self.contrast, self.saturation, self.hue)


def view_params(batch: int, height: int, width: int, blur_p: float, solarize_p: float, crop_scale=(0.08, 1.0),
                flip_p: float = FLIP_P, *, generator: torch.Generator) -> ViewParams:
    """Every draw of one view for `batch` images, all drawn (used or not) in this order: crop
    boxes (crop.crop_boxes), jitter coin, jitter order (the argsort of 4 uniforms: a uniform
    permutation), brightness, contrast, saturation, hue, grayscale coin, blur coin, sigma,
    solarize coin, flip coin."""
    check_generator(generator)
    boxes = crop.crop_boxes(batch, height, width, tuple(crop_scale), generator=generator)

    def coin(p):
        return torch.rand(batch, generator=generator, dtype=F64) < p

    jitter = coin(JITTER_P)
    order = torch.rand((batch, len(JITTER_OPS)), generator=generator, dtype=F64).argsort(1)
    factors = [uniform(batch, *bounds, generator) for bounds in (BRIGHTNESS, CONTRAST, SATURATION, HUE)]
    grey, blur = coin(GREY_P), coin(blur_p)
    sigma = uniform(batch, *SIGMA, generator)
    return ViewParams(*boxes, jitter, order, *factors, grey, blur, sigma, coin(solarize_p), coin(flip_p))


def two_view_params(batch: int, height: int, width: int, crop_scale=(0.08, 1.0), flip_p: float = FLIP_P, *,
                    generator: torch.Generator) -> tuple[ViewParams, ViewParams]:
    """view_params of view 1, then of view 2: what two_views draws."""
    return tuple(view_params(batch, height, width, blur_p, solarize_p, crop_scale, flip_p, generator=generator)
                 for blur_p, solarize_p in VIEWS)


# ---------------------------------------------------------------- application

def _on_subset(q, chosen, op, *args):
    """op(q[i], args[i], ...) written over the images i of q where chosen [B] (CPU) holds (in place)."""
    if not chosen.any():
        return q
    index = chosen.nonzero().squeeze(1)
    on_device = index.to(q.device)
    q[on_device] = op(q[on_device], *(arg[index] for arg in args))
    return q


def color_jitter(q, params: ViewParams):
    """ColorJitter on the images whose jitter coin came up, each op in the image's order."""
    args, q = params.jitter_args(), q.clone()
    for position in range(len(JITTER_OPS)):
        for kind, (_name, op) in enumerate(JITTER_OPS):
            chosen = params.jitter & (params.order[:, position] == kind)
            q = _on_subset(q, chosen, lambda x, a, op=op: op(x, a, None), args[kind])
    return q


def augment_view(pixels: torch.Tensor, params: ViewParams) -> torch.Tensor:
    """One view of RGB images [B, 3, S, S] in [0, 1] with the drawn params -> [0, 1] pixels
    (float32; S x S, the crop resized to the side)."""
    side = pixels.shape[-1]
    q = randaugment._to_uint8_grid(crop.resized_crop(pixels, params.top, params.left, params.height,
                                                     params.width, side))
    q = color_jitter(q, params)
    q = torch.where(params.grey.to(q.device).view(-1, 1, 1, 1), grayscale(q), q)
    q = _on_subset(q, params.blur, lambda x, s: gaussian_blur(x, s, blur_kernel_size(side)), params.sigma)
    q = torch.where(params.solarize.to(q.device).view(-1, 1, 1, 1), solarize(q), q)
    q = torch.where(params.flip.to(q.device).view(-1, 1, 1, 1), q.flip(-1), q)
    return (q / 255).clamp(0, 1)


def two_views(images: torch.Tensor, *, generator: torch.Generator, crop_scale=(0.08, 1.0),
              flip_p: float = FLIP_P) -> tuple[torch.Tensor, torch.Tensor]:
    """images: normalised (ImageNet mean/std, as vitlandscape.data.common.IMAGENET_MEAN/STD) float [B, 3, H, W] on any device;
    returns two normalised views of the same shape and device.

    MoCo v3's augmentation1 and augmentation2 of each image (see the module notes); the draws
    are two_view_params', from the CPU `generator`, so the same generator state gives the same
    views of the same images. Images must be square (H == W): the views are H x H crops.
    `flip_p`: the horizontal flip's probability (MoCo v3's 0.5; a recipe's `hflip`)."""
    check_generator(generator)
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"two_views takes square RGB images [B, 3, H, H]; got shape {tuple(images.shape)}")
    batch, _, height, width = images.shape
    params = two_view_params(batch, height, width, crop_scale, flip_p, generator=generator)
    mean, std = common.IMAGENET_MEAN.to(images.device), common.IMAGENET_STD.to(images.device)
    pixels = (images.float() * std + mean).clamp(0, 1)
    return tuple(((augment_view(pixels, p) - mean) / std).to(images.dtype) for p in params)


class TwoViews:
    """two_views with its own seeded generator, for the training loop: the same seed gives the
    same sequence of views of the same batches."""

    def __init__(self, seed: int, crop_scale=(0.08, 1.0), flip_p: float = FLIP_P):
        self.crop_scale, self.flip_p = tuple(crop_scale), flip_p
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return two_views(images, generator=self.generator, crop_scale=self.crop_scale, flip_p=self.flip_p)
