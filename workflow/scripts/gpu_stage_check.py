"""GPU check of the paper's path through the real stage commands, at ViT-B/16 size.

Makes a generated ImageFolder (224 px training crops from noise JPEGs), an official-layout
MAE ViT-B/16 checkpoint with decoder and a DeiT-layout ViT-B/16 (random weights), then runs
`python -m vitlandscape prepare-data`, `directions` and `surface-tile` (landscape.device
cuda) for the pretext and supervised objectives, as the workflow's rules call them, and
reports each command's wall time, the checkpoint format each surface records and the
tile's losses.

    PYTHONPATH=workflow python workflow/scripts/gpu_stage_check.py --work /tmp/check --out result.json
(`--arch`, `--image-size`, `--eval-samples`, `--device cpu` make a small run to try it.)
"""
import argparse
import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitlandscape.models.arch import PRESETS, build_mae


def fake_imagefolder(root: Path, classes: int, per_class: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / "train" / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size + 32, size + 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{i:04d}.JPEG", quality=90)


def checkpoints(root: Path, arch: str) -> dict:
    import argparse as ap
    dims = PRESETS[arch]
    torch.manual_seed(0)
    mae = root / "mae_pretrain_vit_full.pth"
    torch.save({"model": build_mae(arch, norm_pix_loss=True).state_dict(), "epoch": 1599,
                "args": ap.Namespace(norm_pix_loss=True)}, mae)
    deit = root / "deit_base.pth"
    vit = VisionTransformer(img_size=dims["img_size"], patch_size=dims["patch_size"], embed_dim=dims["embed_dim"],
                            depth=dims["depth"], num_heads=dims["num_heads"], num_classes=1000, qkv_bias=True,
                            norm_layer=partial(nn.LayerNorm, eps=1e-6))
    torch.save({"model": vit.state_dict()}, deit)
    return {"pretext": mae, "supervised": deit}


def run(args: list[str], log: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, "-m", "vitlandscape", *args], stdout=f, stderr=subprocess.STDOUT,
                              env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{args[0]} failed ({done.returncode}):\n{log.read_text()[-3000:]}")
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/vitlandscape-check")
    parser.add_argument("--arch", default="mae_vit_base_patch16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--tile", type=int, default=3, help="points per side of the tile evaluated")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    fake_imagefolder(work / "data", classes=4, per_class=args.eval_samples // 4 + 10, size=args.image_size)
    files = checkpoints(work, args.arch)
    data_cfg = {"dataset": "imagefolder", "path": str(work / "data"), "image_size": args.image_size,
                "eval_samples": args.eval_samples, "test_fraction": 0.05, "seed": 0}
    times = {"prepare-data": run(["prepare-data", "--settings", json.dumps(data_cfg), "--out",
                                  str(work / "data.pt")], work / "prepare.log")}
    result = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "arch": args.arch,
              "eval_samples": args.eval_samples, "data_file_bytes": (work / "data.pt").stat().st_size,
              "surfaces": []}
    n = args.tile
    landscape = {"alpha": [-1.0, 1.0, n], "beta": [-1.0, 1.0, n], "tile": [n, n], "direction_seed": 0,
                 "mask_seed": 0, "normalization": "filter", "perturb_1d": False, "perturb_frozen": False,
                 "orthogonal": False, "batch_size": 250, "device": args.device, "line": [-1.0, 1.0, 3]}
    for objective, ckpt in files.items():
        arch = args.arch if objective == "pretext" else args.arch.removeprefix("mae_")
        settings = {"name": objective, "objective": objective, "method": "mae" if objective == "pretext" else
                    "supervised", "arch": arch, "norm_pix_loss": True, "mask_ratio": 0.75,
                    "downstream_weights": "teacher", "landscape": landscape}
        dirs, tile = work / f"{objective}.safetensors", work / f"{objective}_tile.nc"
        times[f"{objective}/directions"] = run(["directions", "--settings", json.dumps(settings), "--checkpoint",
                                                str(ckpt), "--out", str(dirs)], work / f"{objective}_dirs.log")
        times[f"{objective}/surface-tile"] = run(
            ["surface-tile", "--settings", json.dumps(settings), "--data", str(work / "data.pt"), "--checkpoint",
             str(ckpt), "--directions", str(dirs), "--tile", "a0_b0", "--out", str(tile)],
            work / f"{objective}_tile.log")
        import xarray as xr
        with xr.open_dataset(tile, engine="scipy") as ds:
            result["surfaces"].append({"objective": objective, "checkpoint_format": ds.attrs["checkpoint_format"],
                                       "points": int(ds.loss.size), "loss": ds.loss.values.round(5).tolist()})
        print(Path(work / f"{objective}_tile.log").read_text()[-600:], flush=True)
    result["seconds"] = times
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
