"""What a run will cost, from the config alone: FLOPs per image, grid points, GPU-hours.

Multiply-adds of the ViT are counted by hand (one multiply-add = 2 FLOPs), attention
included (torch's FLOP counter does not see the fused attention kernel on the CPU). Per
transformer block and token: qkv 3 D^2, output projection D^2, MLP 2 r D^2 (r = 4), and
attention 2 T D for T tokens (scores and weighted values). The MAE pretext loss embeds
every patch, encodes the cls token + the kept patches, and decodes all L + 1 tokens.
Needs neither checkpoints nor data.
"""
import math

from vitlandscape import configcheck, grid
from vitlandscape.models.arch import resolve_arch

MLP_RATIO = 4
# Sustained throughput assumed when none is given: bf16 inference of ViT-B-sized models on a
# current data-centre GPU at roughly 40% of its dense peak. An assumption, not a measurement.
DEFAULT_TFLOPS = 300.0


def block_macs(width: int, tokens: int) -> int:
    return tokens * (4 + 2 * MLP_RATIO) * width ** 2 + 2 * tokens ** 2 * width


def classifier_macs(dims: dict, num_classes: int) -> int:
    """A ViT classifying from the cls token: patch embedding, blocks on L + 1 tokens, head."""
    d, p, length = dims["embed_dim"], dims["patch_size"], (dims["img_size"] // dims["patch_size"]) ** 2
    return length * 3 * p * p * d + dims["depth"] * block_macs(d, length + 1) + d * num_classes


def pretext_macs(dims: dict, mask_ratio: float) -> int:
    """The MAE forward of the pretext loss at `mask_ratio`."""
    d, dd, p = dims["embed_dim"], dims["decoder_embed_dim"], dims["patch_size"]
    length = (dims["img_size"] // p) ** 2
    kept = 1 + int(length * (1 - mask_ratio))
    encoder = length * 3 * p * p * d + dims["depth"] * block_macs(d, kept)
    decoder = kept * d * dd + dims["decoder_depth"] * block_macs(dd, length + 1) + (length + 1) * dd * 3 * p * p
    return encoder + decoder


def flops_per_image(model_cfg: dict, objective: str, num_classes: int) -> int:
    if objective == "pretext":
        return 2 * pretext_macs(resolve_arch(model_cfg["arch"], with_decoder=True), model_cfg["mask_ratio"])
    return 2 * classifier_macs(resolve_arch(model_cfg["arch"], with_decoder=False), num_classes)


def plan(config: dict, tflops: float = DEFAULT_TFLOPS, num_classes: int = 1000) -> dict:
    """Cost of every surface (and of one tile) of a schema-validated config."""
    ls = config["landscape"]
    images = config["data"]["eval_samples"]
    points = int(ls["alpha"][2]) * int(ls["beta"][2])
    tiles = len(grid.tile_names(ls["alpha"], ls["beta"], ls["tile"]))
    tile_points = min(int(ls["tile"][0]), int(ls["alpha"][2])) * min(int(ls["tile"][1]), int(ls["beta"][2]))
    surfaces = []
    for name, m in config["models"].items():
        for objective in configcheck.objectives(m):
            flops = flops_per_image(m, objective, num_classes)
            total = flops * images * points
            surfaces.append({"name": f"{name}/{objective}", "flops_per_image": flops, "images": images,
                             "points": points, "tiles": tiles, "total_flops": total,
                             "gpu_hours": total / (tflops * 1e12) / 3600,
                             "tile_gpu_hours": flops * images * tile_points / (tflops * 1e12) / 3600})
    return {"tflops": tflops, "num_classes": num_classes, "surfaces": surfaces,
            "total_gpu_hours": math.fsum(s["gpu_hours"] for s in surfaces)}


def table(result: dict) -> str:
    lines = [f"{'surface':24s} {'FLOP/image':>10s} {'images':>7s} {'points':>7s} {'FLOP':>10s} "
             f"{'GPU-hours':>10s} {'per tile':>10s}"]
    for s in result["surfaces"]:
        lines.append(f"{s['name']:24s} {s['flops_per_image']:10.3g} {s['images']:7d} {s['points']:7d} "
                     f"{s['total_flops']:10.3g} {s['gpu_hours']:10.3g} {s['tile_gpu_hours']:10.3g}")
    lines.append(f"total {result['total_gpu_hours']:.3g} GPU-hours at {result['tflops']:g} TFLOP/s sustained")
    return "\n".join(lines)
