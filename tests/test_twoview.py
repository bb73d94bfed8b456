"""MoCo v3's two views (augment/twoview.py): the colour ops against torchvision's functional ops
on float [0, 1] tensors, the jitter's random order, the wiring of the ops per view, the
probabilities of the draws, determinism, shapes and ranges."""
import itertools
import math

import pytest
import torch
import torchvision.transforms.functional as TF

from vitlandscape.augment import crop, randaugment, twoview
from vitlandscape.data import common

LEVEL = 1 / 255


def gen(seed):
    return torch.Generator().manual_seed(seed)


def grid_images(n, side=16, seed=0):
    """float32 [n, 3, side, side] of random uint8 levels (0..255) and the same / 255."""
    q = torch.randint(0, 256, (n, 3, side, side), generator=gen(seed)).float()
    return q, q / 255


def normalised(n, side=16, seed=0):
    """Normalised images of [0, 1] pixels, as the data pipeline gives."""
    pixels = torch.rand(n, 3, side, side, generator=gen(seed))
    return (pixels - common.IMAGENET_MEAN) / common.IMAGENET_STD


def pixels_of(view):
    return view * common.IMAGENET_STD + common.IMAGENET_MEAN


def drawn(bounds, n, seed):
    return bounds[0] + (bounds[1] - bounds[0]) * torch.rand(n, generator=gen(seed), dtype=torch.float64)


# ---------------------------------------------------------------- each op against torchvision

# (op, argument range, torchvision's op, tolerance in uint8 levels). Ours work on the uint8
# grid as PIL does (moco-v3 jitters PIL images); torchvision's on floats. Measured on these
# noise images (64 x 16 x 16): brightness 0.9999 (PIL truncates the blend to uint8: < 1);
# contrast 1.17 (truncation < 1, plus (1 - f) <= 0.4 times the mean's error: PIL's L rounded per
# pixel and the mean rounded to an integer, <= 1.03 levels: bound 1.41); saturation 1.08
# (truncation plus (1 - f) <= 0.2 times L's rounding 0.53: bound 1.11); hue 0.49997 (exact
# HSV rotation rounded to the nearest level).
JITTER_CASES = {
    "brightness": (randaugment._brightness, twoview.BRIGHTNESS, TF.adjust_brightness, 1.001),
    "contrast": (randaugment._contrast, twoview.CONTRAST, TF.adjust_contrast, 1.45),
    "saturation": (randaugment._color, twoview.SATURATION, TF.adjust_saturation, 1.12),
    "hue": (twoview._hue, twoview.HUE, TF.adjust_hue, 0.501),
}


def test_the_jitter_ops_are_torchvisions_in_its_numbering():
    assert [name for name, _op in twoview.JITTER_OPS] == list(JITTER_CASES)
    assert [op for _name, op in twoview.JITTER_OPS] == [case[0] for case in JITTER_CASES.values()]


@pytest.mark.parametrize("name", JITTER_CASES)
def test_each_jitter_op_matches_torchvision(name):
    op, bounds, reference, tolerance = JITTER_CASES[name]
    q, x = grid_images(64)
    args = drawn(bounds, 64, seed=1)
    ours = op(q, args, None) / 255
    expected = torch.stack([reference(x[i], float(args[i])) for i in range(64)])
    assert (ours - expected).abs().max() <= tolerance * LEVEL
    # the op did something the tolerance would not hide
    assert (expected - x).abs().max() > 10 * LEVEL


def test_hue_keeps_grey_pixels_and_a_full_turn_is_the_identity():
    q, _ = grid_images(8, seed=2)
    grey = q[:, :1].expand_as(q)
    assert torch.equal(twoview._hue(grey, drawn(twoview.HUE, 8, seed=3)), grey)
    # a shift of half a turn twice is a full turn: back to the image, up to rounding twice
    half = torch.full((8,), 0.5, dtype=torch.float64)
    assert (twoview._hue(twoview._hue(q, half), half) - q).abs().max() <= 1


def test_grayscale_matches_torchvision():
    """PIL's L (fixed-point 0.299 / 0.587 / 0.114, rounded) against torchvision's float
    0.2989 / 0.587 / 0.114: rounding 0.5 plus the coefficients' 0.03 levels; measured 0.523."""
    q, x = grid_images(64)
    ours = twoview.grayscale(q) / 255
    assert (ours - TF.rgb_to_grayscale(x, num_output_channels=3)).abs().max() <= 0.55 * LEVEL


def test_solarize_matches_torchvision():
    """Exact on the grid (level k >= 128 iff k / 255 >= 0.5): float32 rounding of 1 - x against
    (255 - k) / 255, measured 7.6e-6 levels."""
    q, x = grid_images(64)
    assert (twoview.solarize(q) / 255 - TF.solarize(x, 0.5)).abs().max() <= 1e-4 * LEVEL
    assert (q >= 128).any() and (q < 128).any()


@pytest.mark.parametrize("side", [16, 64])  # kernels 3 and 7
def test_gaussian_blur_matches_torchvision(side):
    """Separable taps against torchvision's 2-D convolution, both float32: measured 1.1e-4
    levels (sums in another order); zero padding or a wrong sigma are off by levels."""
    q, x = grid_images(24, side=side)
    sigma = drawn(twoview.SIGMA, 24, seed=4)
    size = twoview.blur_kernel_size(side)
    ours = twoview.gaussian_blur(q, sigma, size) / 255
    expected = torch.stack([TF.gaussian_blur(x[i], [size, size], [float(sigma[i])] * 2) for i in range(24)])
    assert (ours - expected).abs().max() <= 1e-3 * LEVEL


def test_blur_kernel_size_is_byols_rule():
    assert [twoview.blur_kernel_size(s) for s in (224, 96, 64, 32, 16)] == [23, 11, 7, 5, 3]


# ---------------------------------------------------------------- jitter order

def test_jitter_applies_each_images_ops_in_its_drawn_order():
    """color_jitter on the batch against each image's ops applied one by one in its drawn order
    (the same op functions on one image; images without the jitter untouched)."""
    q, _ = grid_images(48, seed=5)
    params = twoview.view_params(48, 16, 16, 1.0, 0.0, generator=gen(6))
    assert params.jitter.any() and not params.jitter.all()
    out = twoview.color_jitter(q, params)
    args = params.jitter_args()
    for i in range(48):
        expected = q[i:i + 1]
        if params.jitter[i]:
            for kind in params.order[i].tolist():
                expected = twoview.JITTER_OPS[kind][1](expected, args[kind][i:i + 1], None)
        # elementwise ops and exact integer sums (contrast's mean): the same bits one by one
        assert torch.equal(out[i:i + 1], expected), i
    assert torch.equal(q, grid_images(48, seed=5)[0])  # input left alone


def test_jitter_orders_are_uniform_permutations():
    n = 4800
    order = twoview.view_params(n, 16, 16, 1.0, 0.0, generator=gen(7)).order
    assert (order.sort(1).values == torch.arange(4)).all()
    counts = {perm: 0 for perm in itertools.permutations(range(4))}
    for row in order.tolist():
        counts[tuple(row)] += 1
    p = 1 / 24  # each of the 24 orders, within 4 binomial standard deviations
    assert all(abs(c / n - p) < 4 * math.sqrt(p * (1 - p) / n) for c in counts.values())


def test_the_order_of_the_jitter_ops_matters():
    """On one image, brightness then contrast differs from contrast then brightness (a fixed
    order would not see the drawn one)."""
    q, _ = grid_images(1, seed=8)
    b, c = torch.tensor([1.4], dtype=torch.float64), torch.tensor([0.6], dtype=torch.float64)
    one = randaugment._contrast(randaugment._brightness(q, b, None), c, None)
    other = randaugment._brightness(randaugment._contrast(q, c, None), b, None)
    assert not torch.equal(one, other)


# ---------------------------------------------------------------- the views

def reference_view(pixels, params, i):
    """View of image i, op by op on that image alone, in moco-v3's order: crop (the batch's,
    rounded to levels), jitter, grayscale, blur, solarize, flip."""
    side = pixels.shape[-1]
    q = randaugment._to_uint8_grid(crop.resized_crop(pixels, params.top, params.left, params.height,
                                                     params.width, side))[i:i + 1]
    one = twoview.ViewParams(*(field[i:i + 1] for field in params))
    if one.jitter:
        for kind in one.order[0].tolist():
            q = twoview.JITTER_OPS[kind][1](q, one.jitter_args()[kind], None)
    if one.grey:
        q = twoview.grayscale(q)
    if one.blur:
        q = twoview.gaussian_blur(q, one.sigma, twoview.blur_kernel_size(side))
    if one.solarize:
        q = twoview.solarize(q)
    if one.flip:
        q = q.flip(-1)
    return (q / 255 - common.IMAGENET_MEAN) / common.IMAGENET_STD


def test_two_views_apply_the_drawn_ops_per_image():
    images = normalised(40, seed=9)
    views = twoview.two_views(images, generator=gen(10))
    params = twoview.two_view_params(40, 16, 16, generator=gen(10))
    pixels = pixels_of(images).clamp(0, 1)
    for view, p in zip(views, params):
        for field in ("jitter", "grey", "flip"):
            assert getattr(p, field).any() and not getattr(p, field).all(), field  # both cases seen
        for i in range(40):
            # the same functions on one image: elementwise ops, exact integer sums; the last
            # bits may differ (the blur kernel's exp over 3 taps vs the subset's): measured
            # 4.8e-7, 2 float32 ulps; a misplaced or missing op is off by > 1e-3
            assert (view[i:i + 1] - reference_view(pixels, p, i)).abs().max() <= 1e-6, i
    assert params[0].blur.all() and params[1].blur.any() and params[1].solarize.any()


def test_probabilities_of_the_draws():
    """Over 2000 images, each coin's share within 4 binomial standard deviations of its p;
    view 1 always blurs and never solarises. Grey views are found in the output too (all
    channels equal), exactly where drawn."""
    n = 2000
    images = normalised(n, seed=11)
    v1, v2 = twoview.two_views(images, generator=gen(12))
    p1, p2 = twoview.two_view_params(n, 16, 16, generator=gen(12))

    def near(share, p):
        return abs(share.double().mean() - p) < 4 * math.sqrt(p * (1 - p) / n)

    assert near(p1.grey, 0.2) and near(p2.grey, 0.2)
    assert near(p2.solarize, 0.2) and near(p2.blur, 0.1)
    assert p1.blur.all() and not p1.solarize.any()
    assert near(p1.jitter, 0.8) and near(p2.jitter, 0.8) and near(p1.flip, 0.5) and near(p2.flip, 0.5)
    # the draws of the two views are separate
    assert not torch.equal(p1.grey, p2.grey) and not torch.equal(p1.top, p2.top)
    for pixels, params in ((pixels_of(v1), p1), (pixels_of(v2), p2)):
        # float32 normalisation round trip: grey views' channels measured within 1.2e-7, the
        # others' apart by at least 0.17 somewhere
        grey = ((pixels - pixels[:, :1]).abs() < 1e-5).flatten(1).all(1)
        assert torch.equal(grey, params.grey)
    # arguments within torchvision's ranges and spread over them
    for name, bounds in (("brightness", twoview.BRIGHTNESS), ("contrast", twoview.CONTRAST),
                         ("saturation", twoview.SATURATION), ("hue", twoview.HUE), ("sigma", twoview.SIGMA)):
        value = getattr(p1, name)
        width = bounds[1] - bounds[0]
        assert value.min() >= bounds[0] and value.max() <= bounds[1], name
        assert value.min() < bounds[0] + 0.01 * width and value.max() > bounds[1] - 0.01 * width, name
        assert abs(value.mean() - sum(bounds) / 2) < 4 * width / math.sqrt(12 * n), name  # uniform's sd


def test_crop_scale_is_passed_to_the_crop():
    params = twoview.two_view_params(500, 16, 16, crop_scale=(0.5, 0.6), generator=gen(13))
    for p in params:
        area = (p.height * p.width).double() / 256
        assert area.min() > 0.4 and area.max() < 0.7  # (0.5, 0.6) up to rounding h and w
    default = twoview.two_view_params(500, 16, 16, generator=gen(13))[0]
    assert ((default.height * default.width).double() / 256).min() < 0.2  # the default reaches 0.08


# ---------------------------------------------------------------- determinism, shapes, range

def test_same_seed_same_views_other_seed_other_views():
    images = normalised(16, seed=14)
    kept = images.clone()
    first = twoview.two_views(images, generator=gen(1))
    again = twoview.two_views(images, generator=gen(1))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    other = twoview.two_views(images, generator=gen(2))
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])
    assert not torch.equal(first[0], first[1])
    assert torch.equal(images, kept)  # input left alone
    # the same generator state on a copy of the tensor
    cloned = twoview.two_views(images.clone(), generator=gen(1))
    assert all(torch.equal(a, b) for a, b in zip(first, cloned))


def test_two_views_class_holds_its_generator():
    images = normalised(8, seed=15)
    a, b = twoview.TwoViews(seed=3), twoview.TwoViews(seed=3)
    first, second = a(images), a(images)
    assert all(torch.equal(x, y) for x, y in zip(first, b(images)))
    assert all(torch.equal(x, y) for x, y in zip(second, b(images)))  # the same sequence
    assert not torch.equal(first[0], second[0])  # successive batches get new draws
    assert all(torch.equal(x, y) for x, y in zip(first, twoview.two_views(images, generator=gen(3))))
    narrow = twoview.TwoViews(seed=3, crop_scale=(0.9, 1.0))
    assert narrow.crop_scale == (0.9, 1.0) and not torch.equal(narrow(images)[0], first[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_views_keep_shape_device_dtype_and_the_pixel_range(dtype):
    images = normalised(32, seed=16).to(dtype) * 1.5  # some pixels beyond [0, 1]: clamped
    views = twoview.two_views(images, generator=gen(4))
    low, high = (0 - common.IMAGENET_MEAN) / common.IMAGENET_STD, (1 - common.IMAGENET_MEAN) / common.IMAGENET_STD
    for view in views:
        assert view.shape == images.shape and view.dtype == dtype and view.device == images.device
        assert torch.isfinite(view).all()
        # within the normalised [0, 1] up to float32 rounding of (p - mean) / std
        assert (view >= low.to(dtype) - 1e-6).all() and (view <= high.to(dtype) + 1e-6).all()


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="square RGB"):
        twoview.two_views(torch.zeros(2, 3, 16, 12), generator=gen(0))
    with pytest.raises(ValueError, match="square RGB"):
        twoview.two_views(torch.zeros(2, 1, 16, 16), generator=gen(0))
    with pytest.raises(ValueError, match="CPU torch.Generator"):
        twoview.two_views(torch.zeros(2, 3, 16, 16), generator=None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_get_the_cpu_views():
    """The same draws; the crop's float sums differ in their last bits on CUDA, which moves a
    value across a rounding to levels now and then (1 level), which the jitter may amplify
    (factors <= 1.4): bounds from that, not measured here (no GPU on the development machine)."""
    images = normalised(64, seed=17)
    for cpu, cuda in zip(twoview.two_views(images, generator=gen(5)), twoview.two_views(images.cuda(), generator=gen(5))):
        diff = (pixels_of(cpu) - pixels_of(cuda.cpu())).abs()
        assert diff.max() <= 8 * LEVEL and diff.mean() <= 0.1 * LEVEL
