"""Masks: the official rule, and evaluation masks fixed per image."""
import torch

from conftest import TINY_ARCH
from reference import kept_patches
from vitlandscape.models.arch import build_mae
from vitlandscape.models.masking import eval_noise, num_kept, random_masking


def test_kept_count_and_lowest_noise_rule():
    x = torch.randn(5, 16, 8)
    noise = torch.rand(5, 16)
    kept, mask, ids_restore = random_masking(x, 0.75, noise)
    assert kept.shape == (5, num_kept(16, 0.75), 8) == (5, 4, 8)
    assert (mask.sum(1) == 12).all()
    for i in range(5):
        lowest = set(noise[i].argsort()[:4].tolist())
        assert set((mask[i] == 0).nonzero().flatten().tolist()) == lowest
    assert num_kept(196, 0.75) == 49 and num_kept(10, 0.6) == 4


def test_eval_masks_do_not_depend_on_batching_or_order():
    model = build_mae(TINY_ARCH).eval()
    imgs = torch.randn(10, 3, 16, 16)
    noise = eval_noise(10, 16, seed=3)
    torch.testing.assert_close(noise, eval_noise(10, 16, seed=3))
    assert not torch.equal(noise, eval_noise(10, 16, seed=4))
    with torch.no_grad():
        _, whole, _ = model.forward_encoder(imgs, 0.75, noise)
        for batch_size in (1, 3, 7):
            parts = [model.forward_encoder(imgs[i:i + batch_size], 0.75, noise[i:i + batch_size])[1]
                     for i in range(0, 10, batch_size)]
            torch.testing.assert_close(torch.cat(parts), whole)
        order = torch.randperm(10)
        _, shuffled, _ = model.forward_encoder(imgs[order], 0.75, noise[order])
        torch.testing.assert_close(shuffled, whole[order])


def test_kept_patches_are_the_lowest_noise_ones_in_noise_order():
    """Which patches the encoder gets, checked against the rule written out per image."""
    torch.manual_seed(1)
    x = torch.randn(4, 16, 3)
    noise = torch.rand(4, 16)
    kept, mask, ids_restore = random_masking(x, 0.75, noise)
    for i, ids in enumerate(kept_patches(noise, 0.75)):
        assert torch.equal(kept[i], x[i, ids])  # content and order (ascending noise)
        removed = sorted(set(range(16)) - set(ids.tolist()))
        assert mask[i, removed].eq(1).all() and mask[i, ids].eq(0).all()
        # ids_restore puts the shuffled sequence (kept first, then removed) back in place
        shuffled = torch.cat([ids, torch.tensor([j for j in noise[i].argsort().tolist() if j in removed])])
        assert torch.equal(shuffled[ids_restore[i]], torch.arange(16))


def test_masking_draws_noise_when_none_is_given():
    torch.manual_seed(0)
    x = torch.arange(2 * 10, dtype=torch.float32).reshape(2, 10, 1)
    kept, mask, _ = random_masking(x, 0.6)
    assert kept.shape == (2, 4, 1) and mask.sum() == 12
    torch.manual_seed(0)
    noise = torch.rand(2, 10)
    torch.testing.assert_close(kept, random_masking(x, 0.6, noise)[0])
    assert random_masking(x.double(), 0.6, noise)[1].dtype == torch.float64  # the mask takes x's dtype
