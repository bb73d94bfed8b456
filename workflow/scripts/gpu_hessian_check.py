"""GPU check of the curvature measures at ViT-B/16 size: seconds per Hessian-vector product.

For MAE ViT-B/16 pretext (norm-pix, mask 0.75) and a supervised ViT-B/16 at random
initialisation on synthetic images, it times Hessian-vector products over `--images`
evaluation images (double backward, math attention path, fp32 weights) and a short
Lanczos run, and reports seconds per product and the peak GPU memory.

    PYTHONPATH=workflow python workflow/scripts/gpu_hessian_check.py --out hessian.json
"""
import argparse
import json
import time

import torch

from vitlandscape.landscape import objectives
from vitlandscape.metrics import hessian
from vitlandscape.models.arch import build_mae
from vitlandscape.models.classifier import build_classifier


def objective_for(name: str, images: torch.Tensor, batch: int) -> objectives.Objective:
    if name == "pretext":
        model = build_mae("mae_vit_base_patch16", norm_pix_loss=True)
    else:
        model = build_classifier("vit_base_patch16", 1000, "supervised")
    labels = torch.randint(0, 1000, (len(images),), device=images.device)
    return objectives.from_model(name, model.to(images.device).eval(), images, labels, batch)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=125)
    parser.add_argument("--products", type=int, default=3)
    parser.add_argument("--lanczos-steps", type=int, default=8)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    result = {"device": torch.cuda.get_device_name() if cuda else "cpu", "images": args.images, "rows": []}
    for name in ("pretext", "supervised"):
        torch.manual_seed(0)
        images = torch.randn(args.images, 3, 224, 224, device=device)
        op = hessian.HessianOperator(objective_for(name, images, args.batch_size))
        v = torch.randn(op.size, dtype=torch.float64, device=device)
        op.matvec(v)  # warm-up
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(args.products):
            op.matvec(v)
        if cuda:
            torch.cuda.synchronize()
        per_product = (time.perf_counter() - start) / args.products
        found = hessian.lanczos(op, k=1, steps=args.lanczos_steps, seed=0)
        row = {"objective": name, "parameters": op.size, "seconds_per_product": per_product,
               "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None,
               "lanczos": {k: found[k] for k in ("top_eigenvalues", "top_residuals", "min_eigenvalue",
                                                 "lanczos_steps", "products", "seconds")}}
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        del op, images
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
