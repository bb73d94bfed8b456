"""One command for a lent GPU: the training recipes at paper scale, fp32 against bf16.

For ViT-B/16 at 224 px on synthetic images (random weights and labels: speed does not depend
on their values) it measures, with the library's own pieces (recipes, batch augmentation,
parameter groups, optimizers, autocast):
  - the recipes' batch augmentation on the device: MAE pretraining (crop + flip) and
    fine-tuning (crop, flip, RandAugment, random erasing, mixup/cutmix), images/s;
  - training steps (augmentation excluded) of MAE pretraining (mask 0.75, AdamW) and
    fine-tuning (layer decay 0.65, drop path 0.1, soft targets, AdamW) in fp32 and bf16:
    images/s, peak memory, and bf16's speed-up;
  - the augmentation on the device against the same on the CPU from the same seed: largest
    difference of the crop (float), of RandAugment (uint8 levels) and whether flip and
    erasing are bit-identical.
It names the card. About 2 minutes on an H200.

    PYTHONPATH=workflow python workflow/scripts/gpu_train_bench.py --out gpu_train_bench.json
"""
import argparse
import json
import time

import torch

from vitlandscape import devices
from vitlandscape.augment import crop, erasing, randaugment
from vitlandscape.augment.batch import Augmentation
from vitlandscape.models.arch import build_mae, resolve_arch
from vitlandscape.models.classifier import build_classifier
from vitlandscape.train import loops, optim, recipes


def timed(fn, device: torch.device, repeats: int) -> float:
    """Seconds per call, after one warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def training_step(model, loss_of, hp: dict, precision: str):
    """One optimizer step of the recipe's groups and optimizer on a fixed batch."""
    groups = optim.param_groups(model, hp["weight_decay"], hp["recipe"]["layer_decay"],
                                hp["recipe"]["no_weight_decay"])
    optimizer = optim.make_optimizer(hp["recipe"]["optimizer"], groups, betas=tuple(hp["recipe"]["betas"]))
    for group in optimizer.param_groups:
        group["lr"] = 1e-4 * group["lr_scale"]
    device = next(model.parameters()).device

    def step():
        with devices.precision(precision, device):
            loss = loss_of()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def augmentation_agreement(device: torch.device, size: int) -> dict:
    """The batch augmentations on `device` against the CPU, from the same generator seed."""
    images = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(0))

    def both(fn):
        return [fn(images.to(d), torch.Generator().manual_seed(1)).cpu() for d in ("cpu", device)]

    cropped = both(lambda x, g: crop.random_resized_crop(x, size, generator=g))
    flip = both(lambda x, g: crop.horizontal_flip(x, generator=g))
    levels = both(lambda x, g: randaugment.rand_augment(x, generator=g) * 255)
    erased = both(lambda x, g: erasing.random_erasing(x, prob=1.0, generator=g))
    return {"crop_max_abs_difference": float((cropped[0] - cropped[1]).abs().max()),
            "flip_identical": bool(torch.equal(*flip)),
            "rand_augment_max_level_difference": float((levels[0] - levels[1]).abs().max()),
            "erasing_identical": bool(torch.equal(*erased))}


def run(arch: str, batch: int, repeats: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    size = resolve_arch(arch, with_decoder=False)["img_size"]
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(1000, (batch,), device=device)
    settings = {"method": "mae", "arch": arch, "seed": 0,
                "pretrain": {"batch_size": batch}, "finetune": {"batch_size": batch}}
    pre_hp, fine_hp = recipes.resolve(settings, "pretrain"), recipes.resolve(settings, "finetune")
    result = {"card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "arch": arch, "batch": batch, "torch": torch.__version__}
    for stage, hp in (("pretrain", pre_hp), ("finetune", fine_hp)):
        augmentation = Augmentation(hp["recipe"], 1000, seed=0)
        seconds = timed(lambda: augmentation(images, labels), device, repeats)
        result[f"{stage}_augmentation_images_per_s"] = batch / seconds
    mixed, targets = Augmentation(fine_hp["recipe"], 1000, seed=0)(images, labels)
    mae = build_mae(arch, norm_pix_loss=True).to(device).train()
    classifier = build_classifier(arch, 1000, "finetune", global_pool=True,
                                  drop_path=fine_hp["recipe"]["drop_path"]).to(device).train()
    noise = torch.rand(batch, mae.patch_embed.num_patches, device=device)
    losses = {"pretrain": (mae, lambda: mae(images, 0.75, noise)[0], pre_hp),
              "finetune": (classifier, lambda: loops.classification_loss(classifier(mixed), targets, 0.0), fine_hp)}
    for stage, (model, loss_of, hp) in losses.items():
        for precision in ("fp32", "bf16"):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = timed(training_step(model, loss_of, hp, precision), device, repeats)
            result[f"{stage}_{precision}_images_per_s"] = batch / seconds
            if device.type == "cuda":
                result[f"{stage}_{precision}_peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
            print(f"{stage} {precision}: {batch / seconds:.1f} images/s", flush=True)
        result[f"{stage}_bf16_speedup"] = result[f"{stage}_bf16_images_per_s"] / result[f"{stage}_fp32_images_per_s"]
    result["augmentation_device_vs_cpu"] = augmentation_agreement(device, size)  # on a CPU: exact
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mae_vit_base_patch16", help="preset name or JSON dims (with decoder)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    arch = json.loads(args.arch) if args.arch.startswith("{") else args.arch
    result = run(arch, args.batch_size, args.repeats, torch.device(args.device))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
