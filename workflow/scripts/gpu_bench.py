"""One command for a lent GPU: the grid engine at paper scale in fp32, tf32 and bf16.

For an MAE ViT-B/16 pretext objective at 224 px (official layout, random weights: speed does
not depend on their values) on synthetic images, and for each precision of
`landscape.precision`, it measures on one 5 x 5 tile:
  - the ceiling: plain forward passes of the objective over the evaluation images (images/s);
  - the tile engine (weights moved in place, then a full evaluation): points/s, images/s and
    efficiency = engine images/s / ceiling images/s;
  - achieved TFLOP/s (FLOPs counted by hand, vitlandscape.plan) and model FLOP utilisation
    against the card's dense peak for that precision (`--peak-tflops` or the table below);
  - peak GPU memory;
and how far the tile's losses are from fp32's. It names the card. About 2 minutes on an H200.

    PYTHONPATH=workflow python workflow/scripts/gpu_bench.py --out gpu_bench.json
"""
import argparse
import json
import time

import numpy as np
import torch

from vitlandscape import devices, plan
from vitlandscape.landscape import directions, objectives, surface
from vitlandscape.models.arch import build_mae, resolve_arch

# Dense (no sparsity) peak TFLOP/s from the vendors' data sheets, by a substring of the name.
PEAKS = {"H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4},
         "H100": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4},
         "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}}


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_for(card: str, precision: str, given: float | None) -> float | None:
    if given:
        return given
    return next((p[precision] for name, p in PEAKS.items() if name in card), None)


def run(arch: str, n_images: int, batch: int, side: int, device: torch.device, peak: float | None) -> dict:
    torch.manual_seed(0)
    size = resolve_arch(arch, with_decoder=True)["img_size"]
    images = torch.randn(n_images, 3, size, size, device=device)
    model = build_mae(arch, norm_pix_loss=True).to(device).eval()
    obj = objectives.from_model("pretext", model, images, torch.zeros(n_images, dtype=torch.long), batch)
    perturbation = surface.Perturbation(model, directions.split(directions.make(model, seed=0)))
    alphas = betas = np.linspace(-0.5, 0.5, side)
    flops = plan.flops_per_image({"arch": arch, "mask_ratio": 0.75}, "pretext", 1000)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows, reference = [], None
    for precision in devices.PRECISIONS:
        obj.precision = precision
        obj.evaluate()  # warm-up (kernel selection, autocast caches)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ceiling = side * side * n_images / timed(lambda: [obj.evaluate() for _ in range(side * side)])
        losses = []
        engine = side * side * n_images / timed(
            lambda: losses.append(surface.evaluate_tile(obj, perturbation, alphas, betas)[0]))
        reference = losses[0] if reference is None else reference
        tflops = engine * flops / 1e12
        card_peak = peak_for(card, precision, peak)
        rows.append({"precision": precision, "ceiling_images_per_s": ceiling, "engine_images_per_s": engine,
                     "engine_points_per_s": engine / n_images, "efficiency": engine / ceiling,
                     "achieved_tflops": tflops, "peak_tflops": card_peak,
                     "mfu": tflops / card_peak if card_peak else None,
                     "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30
                     if device.type == "cuda" else None,
                     "max_relative_difference_to_fp32": float(np.max(np.abs(losses[0] - reference) / reference))})
    return {"card": card, "torch": torch.__version__, "arch": arch, "images": n_images, "batch_size": batch,
            "grid": f"{side}x{side}", "flops_per_image": flops, "rows": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="mae_vit_base_patch16",
                        help="preset name, or a JSON arch dict (a tiny one tries the script on a CPU)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--side", type=int, default=5, help="the tile is side x side points")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense peak for every precision "
                        "(default: the data-sheet table in this script, matched by the card's name)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    arch = json.loads(args.arch) if args.arch.startswith("{") else args.arch
    result = run(arch, args.images, args.batch_size, args.side, torch.device(args.device), args.peak_tflops)
    print(f"{result['card']}, torch {result['torch']}: MAE {args.arch} pretext, {result['images']} images, "
          f"{result['grid']} tile")
    print(f"{'precision':9s} {'ceiling img/s':>13s} {'engine pt/s':>11s} {'efficiency':>10s} {'TFLOP/s':>8s} "
          f"{'MFU':>6s} {'memory GiB':>10s} {'vs fp32':>8s}")
    for r in result["rows"]:
        mfu = f"{r['mfu']:.2f}" if r["mfu"] is not None else "n/a"
        memory = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "n/a"
        print(f"{r['precision']:9s} {r['ceiling_images_per_s']:13.1f} {r['engine_points_per_s']:11.3f} "
              f"{r['efficiency']:10.3f} {r['achieved_tflops']:8.2f} {mfu:>6s} {memory:>10s} "
              f"{r['max_relative_difference_to_fp32']:8.1e}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
