"""The RC-MAE step against the float64 reference: same mask for student and teacher,
consistency on the masked patches only, no gradient into the teacher, EMA on every weight."""
import math

import pytest
import torch

import reference
from conftest import TINY_ARCH
from vitlandscape.models.arch import build_mae
from vitlandscape.train import rcmae


@pytest.fixture
def pair():
    torch.manual_seed(0)
    student, teacher = build_mae(TINY_ARCH), build_mae(TINY_ARCH)  # different initial weights
    teacher.eval().requires_grad_(False)
    return student.eval(), teacher


@pytest.mark.parametrize("weight", [1.0, 0.3])
def test_step_loss_is_mae_loss_plus_weighted_consistency_on_masked_patches(pair, weight):
    student, teacher = pair
    imgs, noise = torch.randn(4, 3, 16, 16), torch.rand(4, 16)
    loss = rcmae.step_loss(student, teacher, imgs, 0.75, noise, weight)

    mae_loss, pred_s, mask = reference.mae_forward(student.state_dict(), TINY_ARCH, imgs, noise, 0.75)
    _, pred_t, _ = reference.mae_forward(teacher.state_dict(), TINY_ARCH, imgs, noise, 0.75)
    consistency = (((pred_s - pred_t) ** 2).mean(-1) * mask).sum() / mask.sum()
    all_patches = ((pred_s - pred_t) ** 2).mean()
    assert not math.isclose(float(consistency), float(all_patches), rel_tol=1e-3)  # the mask matters here
    assert math.isclose(loss.item(), float(mae_loss + weight * consistency), rel_tol=1e-5)


def test_gradient_reaches_the_student_only(pair):
    student, teacher = pair
    rcmae.step_loss(student, teacher, torch.randn(2, 3, 16, 16), 0.75, torch.rand(2, 16), 1.0).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.decoder_pred.weight.grad is not None and student.decoder_pred.weight.grad.abs().sum() > 0


def test_ema_moves_every_teacher_weight_towards_the_student(pair):
    student, teacher = pair
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    rcmae.ema_update(teacher, student, 0.9)
    after, target = teacher.state_dict(), student.state_dict()
    for key in ("cls_token", "blocks.1.mlp.fc2.bias", "decoder_pred.weight", "mask_token", "norm.weight"):
        torch.testing.assert_close(after[key], 0.9 * before[key] + 0.1 * target[key])


def test_momentum_schedules():
    assert rcmae.ema_momentum(50, 100, 0.996, "constant") == 0.996
    assert rcmae.ema_momentum(0, 100, 0.996, "cosine") == pytest.approx(0.996, abs=1e-12)
    assert rcmae.ema_momentum(100, 100, 0.996, "cosine") == pytest.approx(1.0, abs=1e-12)
    assert rcmae.ema_momentum(25, 100, 0.99, "cosine") == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)
    assert rcmae.ema_momentum(3, 0, 0.99, "cosine") == pytest.approx(1 - 0.01 * (math.cos(3 * math.pi) + 1) / 2)
