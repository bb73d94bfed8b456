"""Batched augmentations (augment/crop.py, randaugment.py, erasing.py) against the per-image
originals: torchvision's RandomResizedCrop / RandomHorizontalFlip, timm's RandAugment ops (on
PIL images) and timm's RandomErasing rules."""
import math

import numpy as np
import pytest
import timm.data.auto_augment as timm_aa
import torch
from PIL import Image

from vitlandscape.augment import crop, erasing, randaugment

BICUBIC = Image.Resampling.BICUBIC
# timm's create_transform for the MAE / DeiT recipes: bicubic, fill = round(255 * ImageNet mean)
TIMM_HPARAMS = dict(translate_const=100, img_mean=(124, 116, 104), interpolation=BICUBIC)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def sample_images(n=4, h=24, w=40, seed=0) -> np.ndarray:
    """uint8 [n, h, w, 3]: smooth patterns with noise; image 1 has a narrow range, image 2 a
    flat half (flat regions, autocontrast / equalize edge cases); non-square, and large
    enough (>= 2 x 255 pixels) that equalize's step exceeds 1."""
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        base = 128 + 80 * np.sin(xx / 3.0 + i) * np.cos(yy / 4.0)
        img = np.stack([base + rs.randn(h, w) * 20, base * 0.7 + 30, 255 - base], -1)
        if i == 1:
            img = img * 0.5 + 40
        if i == 2:
            img[: h // 2] = 77
        out.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
    return np.stack(out)


def smooth_images(n, h, w, seed=0) -> np.ndarray:
    """uint8 [n, h, w, 3] of low-frequency content within [40, 215]: no bicubic overshoot
    reaches PIL's uint8 clipping."""
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = [128 + 40 * np.sin(xx * rs.uniform(0.1, 0.4) + rs.uniform(0, 6))
           + 40 * np.cos(yy * rs.uniform(0.1, 0.4) + rs.uniform(0, 6)) for _ in range(3 * n)]
    return np.round(np.stack(img).reshape(n, 3, h, w).transpose(0, 2, 3, 1)).astype(np.uint8)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def to_levels(images: torch.Tensor) -> np.ndarray:
    """[0, 1] tensor -> int [n, h, w, 3] uint8 levels (exact for values on the k / 255 grid)."""
    return (images * 255).round().clamp(0, 255).permute(0, 2, 3, 1).numpy().astype(int)


# ---------------------------------------------------------------- determinism

CALLS = {
    "crop": lambda x, g: crop.random_resized_crop(x, 12, generator=g),
    "flip": lambda x, g: crop.horizontal_flip(x, generator=g),
    "rand_augment": lambda x, g: randaugment.rand_augment(x, generator=g),
    "erasing": lambda x, g: erasing.random_erasing(x, prob=0.5, generator=g),
}


@pytest.mark.parametrize("name", CALLS)
def test_same_seed_same_output_other_seed_other_output(name):
    x = torch.rand(16, 3, 20, 20, generator=gen(99))
    first, again = CALLS[name](x, gen(1)), CALLS[name](x, gen(1))
    assert torch.equal(first, again)
    assert not torch.equal(first, CALLS[name](x, gen(2)))
    assert torch.equal(x, torch.rand(16, 3, 20, 20, generator=gen(99)))  # input left alone


def test_generator_must_be_a_cpu_generator():
    with pytest.raises(ValueError, match="CPU torch.Generator"):
        crop.horizontal_flip(torch.zeros(2, 3, 4, 4), generator=None)


# ---------------------------------------------------------------- crop boxes

def test_crop_boxes_inside_and_within_the_ranges():
    height, width, scale, ratio = 48, 64, (0.1, 0.6), (1.2, 2.0)  # w > h: catches w / h swapped
    top, left, h, w = (t.double() for t in crop.crop_boxes(4000, height, width, scale, ratio, generator=gen(0)))
    assert ((top >= 0) & (left >= 0) & (h > 0) & (w > 0)).all()
    assert ((top + h <= height) & (left + w <= width)).all()
    # w = round(sqrt(a r)), h = round(sqrt(a / r)): some w*, h* within 0.5 of them have area
    # fraction a / HW in scale and aspect w* / h* = r in ratio
    area = height * width
    assert ((w - 0.5) * (h - 0.5) <= scale[1] * area).all() and ((w + 0.5) * (h + 0.5) >= scale[0] * area).all()
    assert ((w - 0.5) / (h + 0.5) <= ratio[1]).all() and ((w + 0.5) / (h - 0.5) >= ratio[0]).all()
    # distributions: area fraction ~ U(scale), log aspect ~ U(log ratio), offsets uniform
    assert abs((w * h / area).mean() - 0.35) < 0.01
    assert abs(torch.log(w / h).mean() - (math.log(1.2) + math.log(2.0)) / 2) < 0.02
    for offset, room in ((top, height - h), (left, width - w)):
        assert abs((offset / room).mean() - 0.5) < 0.02
        assert (offset == 0).any() and (offset == room).any()


@pytest.mark.parametrize("height, width, expected", [
    (30, 80, (0, 20, 30, 40)),   # too wide: aspect clamped to 4/3, full height
    (80, 30, (20, 0, 40, 30)),   # too tall: aspect clamped to 3/4, full width
    (40, 44, (0, 0, 40, 44)),    # aspect within the range: the whole image
])
def test_crop_fallback_is_the_clamped_centre_crop(height, width, expected):
    boxes = crop.crop_boxes(50, height, width, scale=(1.5, 2.0), generator=gen(0))  # never fits
    for value, box in zip(expected, boxes):
        assert (box == value).all()


def test_resized_crop_at_the_box_size_is_the_box():
    x = torch.rand(8, 3, 20, 26, generator=gen(0))
    top, left = torch.randint(0, 13, (8,), generator=gen(1)), torch.randint(0, 19, (8,), generator=gen(2))
    size = torch.full((8,), 8)
    out = crop.resized_crop(x, top, left, size, size, 8)
    for i in range(8):
        assert torch.equal(out[i], x[i, :, top[i]:top[i] + 8, left[i]:left[i] + 8])


def _keys(x, a=-0.5):
    x = abs(x)
    if x < 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    return (((x - 5) * x + 8) * x - 4) * a if x < 2 else 0.0


def _reference_weights(n_in, n_out):
    """PIL's resize coefficients for one axis of an already cropped image, written out."""
    scale = n_in / n_out
    widen = max(scale, 1.0)
    weights = np.zeros((n_out, n_in))
    for o in range(n_out):
        centre = (o + 0.5) * scale
        for i in range(max(int(centre - 2 * widen + 0.5), 0), min(int(centre + 2 * widen + 0.5), n_in)):
            weights[o, i] = _keys((i + 0.5 - centre) / widen)
        weights[o] /= weights[o].sum()
    return weights


def reference_resized_crop(image: np.ndarray, box, size) -> np.ndarray:
    """One [C, H, W] image, float64: crop, then resize each axis with PIL's coefficients."""
    top, left, h, w = box
    cropped = image[:, top:top + h, left:left + w]
    return _reference_weights(h, size) @ cropped @ _reference_weights(w, size).T


@pytest.mark.parametrize("size", [9, 50])  # downscaling (antialiased) and upscaling
def test_resized_crop_matches_a_float64_reference(size):
    x = torch.rand(6, 3, 30, 40, generator=gen(0))
    boxes = crop.crop_boxes(6, 30, 40, generator=gen(size))
    out = crop.resized_crop(x, *boxes, size)
    for i in range(6):
        ref = reference_resized_crop(x[i].double().numpy(), [int(t[i]) for t in boxes], size)
        assert np.abs(out[i].numpy() - ref).max() < 1e-5  # float32 sums of <= 30 weighted terms


def test_resized_crop_matches_pil_within_its_uint8_rounding():
    """PIL rounds to uint8 after each of its two passes (with 22-bit fixed-point weights),
    here only once: on images whose bicubic overshoot never reaches PIL's clipping, within 1
    level, about a fifth of the values off by 1 (measured: mean 0.15-0.27)."""
    images = smooth_images(6, 30, 40)
    x = to_tensor(images)
    for size in (12, 24, 57):
        boxes = crop.crop_boxes(6, 30, 40, generator=gen(size))
        out = to_levels(crop.resized_crop(x, *boxes, size))
        for i in range(6):
            top, left, h, w = (int(t[i]) for t in boxes)
            pil = Image.fromarray(images[i]).crop((left, top, left + w, top + h)).resize((size, size), BICUBIC)
            diff = np.abs(out[i] - np.asarray(pil, dtype=int))
            assert diff.max() <= 1 and diff.mean() < 0.35


def test_random_resized_crop_is_crop_boxes_then_resized_crop():
    x = torch.rand(5, 3, 21, 17, generator=gen(0))
    boxes = crop.crop_boxes(5, 21, 17, (0.2, 1.0), generator=gen(3))
    expected = crop.resized_crop(x, *boxes, 10)
    assert torch.equal(crop.random_resized_crop(x, 10, (0.2, 1.0), generator=gen(3)), expected)


# ---------------------------------------------------------------- flip

def test_flip_mirrors_a_fraction_p_of_the_images():
    x = torch.arange(4000 * 3, dtype=torch.float32).view(4000, 1, 1, 3)
    out = crop.horizontal_flip(x, p=0.3, generator=gen(0))
    flipped = (out == x.flip(-1)).all(-1).flatten()
    assert (flipped | (out == x).all(-1).flatten()).all()  # each image exactly mirrored or kept
    assert abs(flipped.double().mean() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 4000)
    assert torch.equal(crop.horizontal_flip(x, p=0.0, generator=gen(0)), x)
    assert torch.equal(crop.horizontal_flip(x, p=1.0, generator=gen(0)), x.flip(-1))


# ---------------------------------------------------------------- RandAugment

def timm_op(image: np.ndarray, name: str, magnitude: float, negate: bool, monkeypatch) -> np.ndarray:
    """timm's AugmentOp(name, prob=1, magnitude) on one uint8 [H, W, 3] image, sign fixed."""
    monkeypatch.setattr(timm_aa, "_randomly_negate", (lambda v: -v) if negate else (lambda v: v))
    if name == "PosterizeIncreasing" and timm_aa._posterize_increasing_level_to_arg(magnitude, {})[0] == 0:
        return np.zeros_like(image)  # 0 bits: black in the recipes' Pillow; Pillow >= 10 raises
    op = timm_aa.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=TIMM_HPARAMS)
    return np.asarray(op(Image.fromarray(image)), dtype=int)


def assert_same_levels(ours: np.ndarray, reference: np.ndarray):
    """Colour ops reproduce PIL's arithmetic (its truncations, float32 blends) and geometric
    ops its bicubic in PIL's order of double operations: identical levels on these images.
    Allowed: 1 level on at most 0.1% of values, for a rotation matrix whose cos / sin (torch
    vs libm) differ by an ulp and so flip a truncation that lies within ~1e-12 of an integer."""
    diff = np.abs(ours - reference)
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3, (diff.max(), (diff > 0).mean())


def test_the_op_set_is_timms_increasing_set():
    assert randaugment.OP_NAMES == tuple(timm_aa._RAND_INCREASING_TRANSFORMS)


@pytest.mark.parametrize("name", randaugment.OP_NAMES)
def test_each_op_matches_timm_on_pil_images(name, monkeypatch):
    images = sample_images()
    x = to_tensor(images)
    for magnitude in (2.5, 6.25, 9.0, 9.99):  # 2.5 / 6.25: posterize / solarize on a level edge
        for negate in (False, True):
            ours = to_levels(randaugment.augment_op(x, name, magnitude, negate))
            reference = np.stack([timm_op(image, name, magnitude, negate, monkeypatch) for image in images])
            assert_same_levels(ours, reference)


def test_posterize_at_magnitude_10_keeps_no_bits():
    x = to_tensor(sample_images())
    assert (randaugment.augment_op(x, "PosterizeIncreasing", 10.0) == 0).all()


def test_rand_augment_draws_ops_per_image_as_timm(monkeypatch):
    """The whole RandAugment: per image, its drawn ops in sequence as timm's ops would apply
    them (skipped ones skipped), from rand_augment_params drawn with the same seed."""
    images = sample_images(n=24, h=16, w=20, seed=1)
    out = to_levels(randaugment.rand_augment(to_tensor(images), num_ops=3, generator=gen(5)))
    params = randaugment.rand_augment_params(24, num_ops=3, generator=gen(5))
    assert params.applied.any() and not params.applied.all()
    for i, image in enumerate(images):
        expected = image
        for layer in range(3):
            if params.applied[i, layer]:
                name = randaugment.OP_NAMES[params.op[i, layer]]
                expected = timm_op(expected.astype(np.uint8), name, float(params.magnitude[i, layer]),
                                   bool(params.negate[i, layer]), monkeypatch)
        assert_same_levels(out[i], expected)


def test_rand_augment_params_distribution():
    params = randaugment.rand_augment_params(6000, num_ops=2, magnitude=9.0, magnitude_std=0.5, prob=0.4,
                                             generator=gen(0))
    counts = torch.bincount(params.op.flatten(), minlength=len(randaugment.OP_NAMES)).double() / params.op.numel()
    assert (counts - 1 / 15).abs().max() < 0.01
    assert (params.op[:, 0] != params.op[:, 1]).double().mean() > 0.9  # drawn per image and layer
    assert abs(params.applied.double().mean() - 0.4) < 0.01
    assert abs(params.negate.double().mean() - 0.5) < 0.01
    m = params.magnitude
    assert m.min() >= 0 and m.max() == 10.0  # clipped at 10
    assert abs(m.mean() - 9.0) < 0.015 and abs(m.std() - 0.5) < 0.015


def test_rand_augment_with_prob_0_returns_the_input():
    x = torch.rand(8, 3, 16, 16, generator=gen(0))  # off the uint8 grid: returned untouched
    assert torch.equal(randaugment.rand_augment(x, prob=0.0, generator=gen(1)), x)


@pytest.mark.parametrize("num_ops, prob", [(2, 0.5), (1, 0.5), (3, 0.3)])
def test_rand_augment_changes_the_expected_fraction_of_images(num_ops, prob):
    """An image changes iff at least one of its num_ops ops applies: 1 - (1 - prob)^num_ops
    (24x24 images in [20, 230] are changed by every op at magnitude ~9)."""
    n = 1200
    x = torch.randint(20, 231, (n, 3, 24, 24), generator=gen(0)).float() / 255
    out = randaugment.rand_augment(x, num_ops=num_ops, prob=prob, generator=gen(num_ops))
    assert out.min() >= 0 and out.max() <= 1
    changed = (out != x).flatten(1).any(1).double().mean()
    expected = 1 - (1 - prob) ** num_ops
    assert abs(changed - expected) < 4 * math.sqrt(expected * (1 - expected) / n)


# ---------------------------------------------------------------- random erasing

def changed_rectangles(out, x):
    """Per image, the (top, left, h, w) of its changed pixels, asserted to form one
    rectangle changed in every channel; None where nothing changed."""
    boxes = []
    for changed in (out != x):
        if not changed.any():
            boxes.append(None)
            continue
        assert (changed == changed[0]).all()  # all channels
        rows, cols = changed[0].any(1).nonzero().flatten(), changed[0].any(0).nonzero().flatten()
        top, left, h, w = rows[0], cols[0], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert changed[0, top:top + h, left:left + w].all() and changed[0].sum() == h * w
        boxes.append((int(top), int(left), int(h), int(w)))
    return boxes


def test_random_erasing_erases_one_rectangle_in_a_fraction_prob_of_images():
    n, size = 3000, 16
    x = torch.full((n, 3, size, size), 7.0)  # no N(0, 1) draw equals 7
    out = erasing.random_erasing(x, prob=0.25, generator=gen(0))
    rectangles = changed_rectangles(out, x)
    erased = [r for r in rectangles if r is not None]
    assert abs(len(erased) / n - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)
    for _top, _left, h, w in erased:
        assert h < size and w < size  # timm's attempts need the rectangle strictly smaller
        # area fraction in [0.02, 1/3] and aspect in [0.3, 1/0.3], up to rounding h and w
        assert (h - 0.5) * (w - 0.5) <= size * size / 3 and (h + 0.5) * (w + 0.5) >= 0.02 * size * size
        assert (h + 0.5) / (w - 0.5) >= 0.3 and (h - 0.5) / (w + 0.5) <= 1 / 0.3
    # the rectangles are erasing_boxes' (images left alone have h = w = 0 there)
    boxes = erasing.erasing_boxes(n, size, size, 0.25, generator=gen(0))
    for i, rectangle in enumerate(rectangles):
        drawn = tuple(int(t[i]) for t in boxes)
        assert rectangle == (drawn if drawn[2] else None)
    values = out[out != 7.0].double()
    assert abs(values.mean()) < 0.02 and abs(values.std() - 1) < 0.02


def test_random_erasing_areas_spread_over_the_range():
    top, left, h, w = (t.double() for t in erasing.erasing_boxes(4000, 64, 64, 1.0, generator=gen(1)))
    fraction = h * w / 64 ** 2
    assert fraction.min() < 0.025 and fraction.max() > 0.3
    assert abs(fraction.mean() - (0.02 + 1 / 3) / 2) < 0.02  # ~ U(0.02, 1/3), a few retried
    assert ((top + h <= 64) & (left + w <= 64)).all()
    for offset, room in ((top, 64 - h), (left, 64 - w)):  # uniform integer offsets, ends included
        assert abs((offset / room).mean() - 0.5) < 0.02
        assert (offset == 0).any() and (offset == room).any()


def test_random_erasing_without_a_fitting_rectangle_erases_nothing():
    x = torch.rand(200, 3, 12, 12, generator=gen(0))
    # area = the whole image: h = round(12 sqrt(r)), w = round(12 / sqrt(r)) never both < 12
    assert torch.equal(erasing.random_erasing(x, prob=1.0, min_area=1.0, max_area=1.0, generator=gen(1)), x)


# ---------------------------------------------------------------- device

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_get_the_cpu_results():
    x = to_tensor(sample_images(n=16, h=20, w=20))
    for name, call in CALLS.items():
        cpu, cuda = call(x, gen(3)), call(x.cuda(), gen(3)).cpu()
        if name == "crop":
            assert (cpu - cuda).abs().max() < 1e-5
        elif name == "rand_augment":
            assert_same_levels(to_levels(cuda), to_levels(cpu))
        else:
            assert torch.equal(cpu, cuda)
