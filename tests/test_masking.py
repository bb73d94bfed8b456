"""Masks: the official rule, and evaluation masks fixed per image."""
import torch

from vitlandscape.masking import eval_noise, num_kept, random_masking
from vitlandscape.models.arch import build_mae
from conftest import TINY_ARCH


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
