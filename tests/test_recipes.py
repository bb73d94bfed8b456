"""The training recipes: official defaults, the schedule, the losses, mixing, drop path,
mixed precision, and their checks; each against the formula or the official value."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, TINY_ARCH, model_settings, validated
from vitlandscape import configcheck, devices
from vitlandscape.augment.batch import Augmentation
from vitlandscape.models.classifier import build_classifier
from vitlandscape.train import loops, optim, recipes, stages


def _resolved(method, stage, arch=None, **given):
    cfg = model_settings(method)
    if arch is not None:
        cfg["arch"] = arch
    cfg[stage] = {**cfg[stage], **given}
    return recipes.resolve(cfg, stage)


def test_official_defaults_per_stage_and_method():
    mae = _resolved("mae", "pretrain", batch_size=4096)
    assert mae["lr"] == pytest.approx(1.5e-4 * 16) and mae["weight_decay"] == 0.05
    assert mae["recipe"]["optimizer"] == "adamw" and mae["recipe"]["betas"] == [0.9, 0.95]
    assert mae["recipe"]["crop_scale"] == [0.2, 1.0] and mae["recipe"]["mixup"] == 0
    probe = _resolved("rcmae", "probe", batch_size=16384)
    assert probe["lr"] == pytest.approx(6.4) and probe["weight_decay"] == 0
    assert probe["recipe"]["optimizer"] == "lars" and probe["recipe"]["crop_scale"] == [0.08, 1.0]
    sup = _resolved("supervised", "pretrain", batch_size=512)
    assert sup["lr"] == pytest.approx(5e-4) and sup["recipe"]["min_lr"] == 1e-5  # DeiT: 5e-4 at batch 512
    assert sup["recipe"]["no_weight_decay"] == ["cls_token", "pos_embed"] and sup["recipe"]["layer_decay"] is None
    custom = _resolved("mae", "finetune", batch_size=1024)
    assert custom["lr"] == pytest.approx(4e-3) and custom["recipe"]["layer_decay"] == 0.75
    assert custom["recipe"]["betas"] == [0.9, 0.999] and custom["recipe"]["min_lr"] == 1e-6
    assert (custom["recipe"]["mixup"], custom["recipe"]["cutmix"], custom["recipe"]["label_smoothing"]) == (0.8, 1.0, 0.1)
    assert custom["recipe"]["rand_augment"] == {"num_ops": 2, "magnitude": 9.0, "magnitude_std": 0.5}
    assert custom["recipe"]["random_erasing"] == 0.25


@pytest.mark.parametrize("arch, blr, layer_decay, drop_path", [("mae_vit_base_patch16", 5e-4, 0.65, 0.1),
                                                               ("mae_vit_large_patch16", 1e-3, 0.75, 0.2),
                                                               ("mae_vit_huge_patch14", 1e-3, 0.75, 0.3)])
def test_fine_tuning_defaults_follow_the_model_size(arch, blr, layer_decay, drop_path):
    stage_cfg = _resolved("mae", "finetune", arch=arch, batch_size=1024)
    assert stage_cfg["lr"] == pytest.approx(blr * 4)
    assert (stage_cfg["recipe"]["layer_decay"], stage_cfg["recipe"]["drop_path"]) == (layer_decay, drop_path)


def test_config_changes_one_element_and_an_absolute_lr_wins():
    stage_cfg = _resolved("mae", "finetune", batch_size=64, lr=0.02, recipe={"mixup": 0.0, "precision": "fp32"})
    assert stage_cfg["lr"] == 0.02 and stage_cfg["recipe"]["mixup"] == 0 and stage_cfg["recipe"]["precision"] == "fp32"
    assert stage_cfg["recipe"]["cutmix"] == 1.0  # the rest stays official
    assert _resolved("mae", "probe", batch_size=64, blr=0.4)["lr"] == pytest.approx(0.1)
    assert _resolved("mae", "probe", weight_decay=0.3)["weight_decay"] == 0.3


@pytest.mark.parametrize("stage, given, words", [
    ("probe", {"lr": 0.1, "blr": 0.1}, "give lr (absolute) or blr"),
    ("finetune", {"batch_size": 31}, "batch_size 31 must be even"),
    ("probe", {"recipe": {"mixup": 0.8}}, "the linear probe trains only its head"),
    ("pretrain", {"recipe": {"label_smoothing": 0.1}}, "MAE pretraining has no labels"),
    ("pretrain", {"recipe": {"crop_scale": [0.9, 0.2]}}, "is not [smallest, largest]"),
])
def test_recipe_problems_name_the_key(stage, given, words):
    config = validated({"models": {"m": {"method": "mae", "arch": dict(TINY_ARCH), stage: given}}})
    found = [p for p in configcheck.problems(config) if p.startswith(f"models.m.{stage}")]
    assert len(found) == 1 and words in found[0], found


def test_unknown_recipe_element_is_refused():
    config = {"models": {"m": {"method": "mae", "arch": dict(TINY_ARCH), "finetune": {"recipe": {"mixups": 1}}}}}
    with pytest.raises(configcheck.ConfigError, match="models.m.finetune.recipe.*mixups"):
        configcheck.validate_config(config, ROOT / "config" / "schema.yaml")


def test_schedule_warms_up_from_zero_and_ends_at_min_lr():
    total, warmup, peak, floor = 1000, 100, 2.0, 1e-3
    assert loops.learning_rate(0, total, warmup, peak, floor) == 0.0
    assert loops.learning_rate(25, total, warmup, peak, floor) == pytest.approx(0.5)
    assert loops.learning_rate(100, total, warmup, peak, floor) == pytest.approx(peak)
    # half-way through the cosine: the mean of peak and floor; a quarter: (1 + cos(pi/4)) / 2 of the way
    assert loops.learning_rate(550, total, warmup, peak, floor) == pytest.approx((peak + floor) / 2)
    quarter = floor + (peak - floor) * (1 + math.sqrt(0.5)) / 2
    assert loops.learning_rate(325, total, warmup, peak, floor) == pytest.approx(quarter)
    assert loops.learning_rate(total, total, warmup, peak, floor) == pytest.approx(floor)


def test_label_smoothing_loss_is_the_smoothed_cross_entropy():
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    eps = 0.1
    log_p = logits.double() - logits.double().exp().sum(1, keepdim=True).log()
    expected = -((1 - eps) * log_p[torch.arange(6), labels] + eps / 5 * log_p.sum(1)).mean()
    assert float(loops.classification_loss(logits, labels, eps)) == pytest.approx(float(expected), rel=1e-6)
    soft = torch.softmax(torch.randn(6, 5), 1)
    assert float(loops.classification_loss(logits, soft, eps)) == pytest.approx(
        float(-(soft.double() * log_p).sum(1).mean()), rel=1e-6)  # soft targets carry their smoothing


def _mixing(mixup, cutmix, smoothing=0.0):
    recipe = {**recipes.OFFICIAL["finetune"]["recipe"], "crop_scale": None, "hflip": 0.0, "rand_augment": None,
              "random_erasing": 0.0, "mixup": mixup, "cutmix": cutmix, "label_smoothing": smoothing}
    return Augmentation(recipe, num_classes=4, seed=3)


def test_mixup_mixes_images_and_labels_with_one_weight():
    images = torch.randn(6, 3, 8, 8)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    mixed, targets = _mixing(0.8, 0.0)(images, labels)
    onehot = F.one_hot(labels, 4).float()
    lam = float(targets[0, 0])  # image 0 (class 0) is mixed with image 5 (class 1)
    assert torch.allclose(targets, lam * onehot + (1 - lam) * onehot.flip(0), atol=1e-6)
    assert torch.allclose(mixed, lam * images + (1 - lam) * images.flip(0), atol=1e-5)


def test_cutmix_pastes_a_box_and_weights_labels_by_its_area():
    images = torch.randn(6, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    mixed, targets = _mixing(0.0, 1.0, smoothing=0.1)(images, labels)
    pasted = (mixed != images).any(1)  # pixels taken from the flipped batch
    assert torch.equal(mixed[:, :, pasted[0]], images.flip(0)[:, :, pasted[0]])
    area = float(pasted[0].float().mean())
    on, off = 1 - 0.1 + 0.1 / 4, 0.1 / 4
    smooth = F.one_hot(labels, 4).float() * (on - off) + off
    assert torch.allclose(targets, (1 - area) * smooth + area * smooth.flip(0), atol=1e-6)


def test_augmentation_is_seeded_and_leaves_numpy_alone():
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    recipe = recipes.resolve(model_settings("mae"), "finetune")["recipe"]
    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    first = Augmentation(recipe, 4, seed=0)(images, labels)
    assert np.array_equal(np.random.get_state()[1], before)
    again = Augmentation(recipe, 4, seed=0)(images, labels)
    other = Augmentation(recipe, 4, seed=1)(images, labels)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_drop_path_rises_to_its_rate_and_rescales_kept_samples():
    model = build_classifier(TINY_ARCH, 3, "finetune", drop_path=0.3)
    rates = [getattr(block.drop_path1, "drop_prob", 0.0) for block in model.blocks]  # rate 0: an Identity
    assert rates == pytest.approx([0.3 * i / (len(rates) - 1) for i in range(len(rates))])
    drop = model.blocks[-1].drop_path1.train()
    out = drop(torch.ones(20000, 2))
    kept = out[:, 0] != 0
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.7))
    assert abs(1 - float(kept.float().mean()) - 0.3) < 0.02
    assert torch.equal(drop.eval()(torch.ones(5, 2)), torch.ones(5, 2))


@pytest.mark.parametrize("sam", ["none", "sam"])
def test_fit_scales_each_group_lr(sam):
    """A group whose lr_scale is 0 does not move; the other does (with SAM too: its base optimizer
    takes the loop's per-group lr)."""
    model = build_classifier(TINY_ARCH, 3, "finetune")
    groups = optim.param_groups(model, 0.05, layer_decay=0.5)
    for group in groups:
        group["lr_scale"] = 0.0 if group["params"][0] is model.cls_token else 1.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = model_settings("mae")
    cfg["finetune"]["recipe"] = {**(cfg["finetune"].get("recipe") or {}), "sam": sam}
    stage_cfg = {**recipes.resolve(cfg, "finetune"), "epochs": 1, "warmup_epochs": 0, "lr": 1e-2}
    batches = [(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0]))] * 2
    loops.fit(groups, lambda x, y, step: F.cross_entropy(model(x), y), batches, stage_cfg, "test")
    frozen = [n for n, p in model.named_parameters() if any(p is q for g in groups if g["lr_scale"] == 0
                                                           for q in g["params"])]
    assert frozen and all(torch.equal(model.state_dict()[n], before[n]) for n in frozen)
    assert not torch.equal(model.head.weight, before["head.weight"])


def test_bf16_training_keeps_float32_weights_and_teacher(tmp_path, data_file):
    results = {}
    for precision in ("bf16", "fp32"):
        cfg = model_settings("rcmae")
        cfg["pretrain"] = {**cfg["pretrain"], "recipe": {"precision": precision}}
        results[precision] = stages.pretrain(cfg, data_file, tmp_path / f"{precision}.pt")
    bf16 = results["bf16"]
    assert all(v.dtype == torch.float32 for part in ("student", "teacher") for v in bf16[part].values())
    again = stages.pretrain({**cfg, "pretrain": {**cfg["pretrain"], "recipe": {"precision": "bf16"}}}, data_file,
                            tmp_path / "again.pt")
    assert all(torch.equal(again["model"][k], bf16["model"][k]) for k in bf16["model"])
    differ = [k for k in bf16["model"] if not torch.equal(bf16["model"][k], results["fp32"]["model"][k])]
    assert differ  # autocast did run: bf16 matmuls round differently


def test_training_precision_runs_matmuls_in_bf16():
    with devices.precision("bf16", torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with devices.precision("fp32", torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_stages_augment_training_batches_as_the_recipe_says(tmp_path, data_file):
    cfg = model_settings("mae")
    plain = {**cfg, "pretrain": {**cfg["pretrain"], "recipe": {"crop_scale": None, "hflip": 0.0}}}
    official = stages.pretrain(cfg, data_file, tmp_path / "a.pt")["model"]
    unchanged = stages.pretrain(plain, data_file, tmp_path / "b.pt")["model"]
    assert not all(torch.equal(official[k], unchanged[k]) for k in official)
    in_memory, streamed = {"num_classes": 3}, {"num_classes": 3, "streaming": True}
    assert stages.batch_augmentation(recipes.resolve(plain, "pretrain"), in_memory) is None
    assert stages.batch_augmentation(recipes.resolve(cfg, "pretrain"), in_memory).recipe["crop_scale"] == [0.2, 1.0]
    assert stages.batch_augmentation(recipes.resolve(cfg, "pretrain"), streamed) is None  # the loader crops and flips
    fine_tuning = stages.batch_augmentation(recipes.resolve(cfg, "finetune"), streamed)
    assert fine_tuning.recipe["crop_scale"] is None and fine_tuning.recipe["random_erasing"] == 0.25


def test_classification_loss_equals_the_official_codes_timm_losses():
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    logits = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(8) % 6
    assert float(loops.classification_loss(logits, labels, 0.1)) == pytest.approx(
        float(LabelSmoothingCrossEntropy(0.1)(logits, labels)), rel=1e-6)
    soft = torch.softmax(torch.randn(8, 6), 1)
    assert float(loops.classification_loss(logits, soft, 0.1)) == pytest.approx(
        float(SoftTargetCrossEntropy()(logits, soft)), rel=1e-6)
