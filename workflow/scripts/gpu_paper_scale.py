"""GPU check for the paper's scale: how fast the grid engine evaluates ViT-B/L points.

For MAE ViT-B/16 pretext (norm-pix, mask 0.75), a supervised ViT-B/16 and MAE ViT-L/16
pretext, at random initialisation on synthetic images (speed does not depend on the
weights' values), it measures:
  - the landscape engine's points/s (weights moved in place, then a full evaluation), in
    fp32 as the workflow computes today, and with TF32 matmuls allowed;
  - a bf16-autocast forward pass's images/s;
and turns them into achieved TFLOP/s (FLOPs counted by hand, vitlandscape.plan) and into
GPU-hours per 51x51 surface and per 17x17 tile of config/paper.yaml (10,000 images).

Run on a CUDA machine from the repository root:
    PYTHONPATH=workflow python workflow/scripts/gpu_paper_scale.py --out gpu.json
"""
import argparse
import json
import time

import torch

from vitlandscape import plan
from vitlandscape.landscape import directions, objectives, surface
from vitlandscape.models.arch import build_mae
from vitlandscape.models.classifier import build_classifier

PAPER_IMAGES, SURFACE_POINTS, TILE_POINTS = 10_000, 51 * 51, 17 * 17
CASES = [  # name, objective, arch
    ("mae_vit_base/pretext", "pretext", "mae_vit_base_patch16"),
    ("vit_base/supervised", "supervised", "vit_base_patch16"),
    ("mae_vit_large/pretext", "pretext", "mae_vit_large_patch16"),
]


def build_objective(objective: str, arch: str, images: torch.Tensor, batch: int) -> objectives.Objective:
    if objective == "pretext":
        model = build_mae(arch, norm_pix_loss=True)
    else:
        model = build_classifier(arch, 1000, "supervised")
    labels = torch.randint(0, 1000, (len(images),), device=images.device)
    return objectives.from_model(objective, model.to(images.device).eval(), images, labels, batch)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def measure(name, objective, arch, n_images, batch, points, device) -> dict:
    torch.manual_seed(0)
    images = torch.randn(n_images, 3, 224, 224, device=device)
    obj = build_objective(objective, arch, images, batch)
    dirs = directions.split(directions.make(obj.model, seed=0))
    perturbation = surface.Perturbation(obj.model, dirs)
    grid = [(a, b) for a in (-0.5, 0.5) for b in (-0.5, 0.0, 0.5)][:points]
    row = {"surface": name, "eval_images": n_images, "batch_size": batch}
    for label, tf32 in (("fp32", False), ("tf32", True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        # called here, before the del below that ruff reads as unbinding the names
        seconds = timed(lambda: surface.evaluate_points(obj, perturbation, grid), 1) / len(grid)  # noqa: F821
        row[f"{label}_s_per_point"] = seconds
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    with torch.autocast(device.type, dtype=torch.bfloat16):
        row["bf16_s_per_point"] = timed(obj.evaluate, 2)
    cfg = {"arch": arch, "mask_ratio": 0.75}
    flops = plan.flops_per_image(cfg, objective, 1000)
    row["flops_per_image"] = flops
    for label in ("fp32", "tf32", "bf16"):
        per_image = row[f"{label}_s_per_point"] / n_images
        row[f"{label}_tflops"] = flops / per_image / 1e12
        row[f"{label}_gpu_hours_surface"] = per_image * PAPER_IMAGES * SURFACE_POINTS / 3600
        row[f"{label}_gpu_hours_tile"] = per_image * PAPER_IMAGES * TILE_POINTS / 3600
    del obj, perturbation, images
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="evaluation images per point")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--points", type=int, default=6, help="grid points timed per precision")
    parser.add_argument("--device", default="cuda", help="cuda (cpu only to try the script)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    result = {"device": name, "torch": torch.__version__, "rows": []}
    print(f"device: {result['device']}, torch {result['torch']}", flush=True)
    for case, objective, arch in CASES:
        row = measure(case, objective, arch, args.images, args.batch_size, args.points, device)
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
