"""Objectives: sums kept in float64 across batches, so a large evaluation set loses no digits."""
import argparse

import pytest
import torch
import torch.nn.functional as F

import reference
from conftest import TINY_ARCH, model_settings
from vitlandscape.landscape import objectives
from vitlandscape.models.arch import build_mae
from vitlandscape.models.classifier import build_classifier
from vitlandscape.models.masking import eval_noise

CPU = torch.device("cpu")

N = 40


@pytest.fixture
def prepared():
    torch.manual_seed(0)
    return {"train_images": torch.randn(N + 5, 3, 16, 16), "train_labels": torch.arange(N + 5) % 3,
            "eval_index": torch.arange(5, N + 5)}


def test_pretext_loss_is_summed_in_float64(tmp_path, prepared):
    torch.manual_seed(1)
    model = build_mae(TINY_ARCH).eval()
    torch.save({"model": model.state_dict(), "args": argparse.Namespace()}, tmp_path / "mae.pth")
    objective = objectives.build("pretext", tmp_path / "mae.pth", model_settings(), prepared, batch_size=1,
                                 mask_seed=5, device=CPU)
    loss, accuracy = objective.evaluate()
    images = prepared["train_images"][5:]
    noise = eval_noise(N, 16, 5)
    total = count = 0.0
    with torch.no_grad():
        for i in range(N):  # one image a batch, as the objective was built
            latent, mask, ids_restore = model.forward_encoder(images[i:i + 1], 0.75, noise[i:i + 1])
            per_patch = model.patch_losses(images[i:i + 1], model.forward_decoder(latent, ids_restore))
            total += float((per_patch * mask).double().sum())
            count += float(mask.sum())
    assert loss == pytest.approx(total / count, rel=1e-13, abs=0)
    assert accuracy != accuracy  # NaN: the pretext loss has no accuracy
    assert objective.info == {"eval_samples": N, "mask_seed": 5, "mask_ratio": 0.75, "checkpoint_format": "mae_pretrain"}


def test_classification_loss_is_summed_in_float64(tmp_path, prepared):
    torch.manual_seed(2)
    model = build_classifier(TINY_ARCH, 3, "finetune").eval()
    ckpt = {"kind": "classifier", "head": "finetune", "arch": TINY_ARCH, "num_classes": 3, "model": model.state_dict()}
    torch.save(ckpt, tmp_path / "ft.pt")
    objective = objectives.build("finetune", tmp_path / "ft.pt", model_settings(), prepared, batch_size=1,
                                 mask_seed=0, device=CPU)
    loss, accuracy = objective.evaluate()
    images, labels = prepared["train_images"][5:], prepared["train_labels"][5:]
    total, correct = 0.0, 0
    with torch.no_grad():
        for i in range(N):
            logits = model(images[i:i + 1])
            total += float(F.cross_entropy(logits, labels[i:i + 1], reduction="sum").double())
            correct += int(logits.argmax(-1) == labels[i])
    assert loss == pytest.approx(total / N, rel=1e-13, abs=0)
    assert accuracy == correct / N and 0 < correct < N


def test_unknown_objective(tmp_path, prepared):
    torch.save({"model": build_mae(TINY_ARCH).state_dict()}, tmp_path / "mae.pth")
    with pytest.raises(ValueError, match="unknown objective .recon.; use pretext, contrastive, probe, finetune, supervised"):
        objectives.build("recon", tmp_path / "mae.pth", model_settings(), prepared, batch_size=8, mask_seed=0,
                         device=CPU)


def test_norm_pix_targets_follow_the_config(tmp_path, prepared):
    torch.manual_seed(3)
    model = build_mae(TINY_ARCH).eval()
    torch.save({"model": model.state_dict()}, tmp_path / "mae.pth")
    losses = {}
    for norm_pix in (False, True):
        objective = objectives.build("pretext", tmp_path / "mae.pth", model_settings(norm_pix_loss=norm_pix),
                                     prepared, batch_size=16, mask_seed=0, device=CPU)
        losses[norm_pix] = objective.evaluate()[0]
        expected = reference.mae_loss(model.state_dict(), TINY_ARCH, prepared["train_images"][5:], eval_noise(N, 16, 0),
                                      0.75, norm_pix)
        assert losses[norm_pix] == pytest.approx(expected, rel=1e-5)
    assert abs(losses[True] - losses[False]) > 1e-3 * losses[False]  # far beyond the tolerance above


@pytest.mark.parametrize("norm_pix", [True, False])
def test_zero_prediction_loss_by_hand(tmp_path, prepared, norm_pix):
    """Mean over the masked patches of the mean squared target, in float64, masks from the
    contract (the int(L * 0.25) lowest-noise patches are kept)."""
    model = build_mae(TINY_ARCH, norm_pix_loss=norm_pix).eval()
    torch.save({"model": model.state_dict()}, tmp_path / "mae.pth")
    cfg = model_settings(norm_pix_loss=norm_pix)
    objective = objectives.build("pretext", tmp_path / "mae.pth", cfg, prepared, batch_size=7, mask_seed=2, device=CPU)
    images = prepared["train_images"][5:].double()
    patches = images.reshape(N, 3, 4, 4, 4, 4).permute(0, 2, 4, 3, 5, 1).reshape(N, 16, 48)
    if norm_pix:
        patches = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6) ** 0.5
    noise = eval_noise(N, 16, 2)
    masked = torch.zeros(N, 16, dtype=torch.bool)
    for i in range(N):
        masked[i, noise[i].sort().indices[4:]] = True
    expected = (patches ** 2).mean(-1)[masked].mean().item()
    assert objective.zero_prediction_loss() == pytest.approx(expected, rel=1e-6)


def test_an_untrained_decoder_is_flagged_in_the_line_log(tmp_path, prepared, capsys):
    from vitlandscape.landscape import stages
    model = build_mae(TINY_ARCH, norm_pix_loss=True).eval()
    torch.save({"model": model.state_dict()}, tmp_path / "mae.pth")
    cfg = {**model_settings(norm_pix_loss=True), "name": "mae"}
    objective = objectives.build("pretext", tmp_path / "mae.pth", cfg, prepared, batch_size=8, mask_seed=0, device=CPU)
    found = stages.pretext_sanity(objective.evaluate()[0], objective, cfg)
    assert found["centre_loss"] >= 0.8 * found["zero_prediction_loss"]  # random init: no better than zeros
    assert "WARNING: models.mae: the pretext loss of the trained model" in capsys.readouterr().out


@pytest.mark.parametrize("objective", ["pretext", "probe"])
def test_a_streamed_subset_stays_uint8_and_gives_the_same_losses(tmp_path, objective):
    """Streamed (uint8) evaluation images are normalised batch by batch on the device, and
    pretext targets recomputed per batch: the same numbers as the float subset, bit for bit."""
    from vitlandscape.data import prepare
    torch.manual_seed(5)
    pixels = torch.randint(0, 256, (N, 3, 16, 16), dtype=torch.uint8)
    labels = torch.arange(N) % 3
    streamed = {"streaming": True, "eval_images": pixels, "eval_labels": labels}
    in_memory = {"train_images": prepare.normalise(pixels), "train_labels": labels, "eval_index": torch.arange(N)}
    if objective == "pretext":
        torch.save({"model": build_mae(TINY_ARCH, norm_pix_loss=True).state_dict()}, tmp_path / "m.pth")
    else:
        torch.save({"model": build_classifier(TINY_ARCH, 3, "probe").state_dict()}, tmp_path / "m.pth")
    cfg = model_settings(norm_pix_loss=True)
    a = objectives.build(objective, tmp_path / "m.pth", cfg, streamed, batch_size=16, mask_seed=0, device=CPU)
    b = objectives.build(objective, tmp_path / "m.pth", cfg, in_memory, batch_size=16, mask_seed=0, device=CPU)
    assert all(batch[0].dtype == torch.uint8 for batch in a.batches)
    assert a.evaluate() == pytest.approx(b.evaluate(), rel=0, abs=0, nan_ok=True)
    if objective == "pretext":
        assert a.zero_prediction_loss() == b.zero_prediction_loss()
