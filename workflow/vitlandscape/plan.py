"""What a run will cost, from the config alone: FLOPs per image, grid points, GPU-hours,
for every surface and every training stage.

Multiply-adds of the ViT are counted by hand (one multiply-add = 2 FLOPs), attention
included (torch's FLOP counter does not see the fused attention kernel on the CPU). Per
transformer block and token: qkv 3 D^2, output projection D^2, MLP 2 r D^2 (r = 4), and
attention 2 T D for T tokens (scores and weighted values). The MAE pretext loss embeds
every patch, encodes the cls token + the kept patches, and decodes all L + 1 tokens.
Training counts forward + backward as 3 forwards (twice a step with SAM). Needs neither
checkpoints nor data (nor torch: `vitlandscape.landscape.throughput` measures the rates that
replace the assumed one).
"""
import json
import math
from pathlib import Path

import yaml

from vitlandscape import configcheck, methods, paths, studies
from vitlandscape.landscape import grid
from vitlandscape.models.arch import resolve_arch
from vitlandscape.train import recipes

MLP_RATIO = 4
# Sustained throughput when none is given: the grid engine (fp32) evaluating ViT-B/16 and
# ViT-L/16 on an NVIDIA H200 reached 40-44 TFLOP/s (workflow/scripts/gpu_paper_scale.py,
# 2026-11-28). A GPU without fp32 at that rate is slower; measure yours with --measure.
DEFAULT_TFLOPS = 40.0
# A Hessian-vector product (double backward, math attention) took 9.6 (supervised) and 10.9
# (pretext) forward passes' time for ViT-B/16 on an H200, fp32 (workflow/scripts/gpu_hessian_check.py
# against the fp32 forward rate above, 2026-11-28); on 2 CPU cores about 17.
HVP_FORWARDS = 11
DIGITS_IMAGES = 1797  # scikit-learn's load_digits
IMAGENET_TRAIN_IMAGES = 1_281_167  # ImageNet-1k's training split, assumed for imagefolder
FILE_TRAIN_IMAGES = {"fashion_mnist": 60_000, "mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000}  # official files
NUM_CLASSES = {"digits": 10, "fashion_mnist": 10, "mnist": 10, "cifar10": 10, "cifar100": 100}  # others: 1000 assumed


class PlanError(ValueError):
    """The config alone does not say what the plan needs."""


def block_macs(width: int, tokens: int) -> int:
    return tokens * (4 + 2 * MLP_RATIO) * width ** 2 + 2 * tokens ** 2 * width


def encoder_macs(dims: dict) -> int:
    """The ViT encoder on a whole image: patch embedding, blocks on L + 1 tokens."""
    d, p, length = dims["embed_dim"], dims["patch_size"], (dims["img_size"] // dims["patch_size"]) ** 2
    return length * 3 * p * p * d + dims["depth"] * block_macs(d, length + 1)


def classifier_macs(dims: dict, num_classes: int) -> int:
    """A ViT classifier: the encoder and a linear head. Pooling the cls token or the mean of
    the patch tokens (fine-tuning's global pool) and the norms are no multiply-adds."""
    return encoder_macs(dims) + dims["embed_dim"] * num_classes


def pretext_macs(dims: dict, mask_ratio: float) -> int:
    """The MAE forward of the pretext loss at `mask_ratio`."""
    d, dd, p = dims["embed_dim"], dims["decoder_embed_dim"], dims["patch_size"]
    length = (dims["img_size"] // p) ** 2
    kept = 1 + int(length * (1 - mask_ratio))
    encoder = length * 3 * p * p * d + dims["depth"] * block_macs(d, kept)
    decoder = kept * d * dd + dims["decoder_depth"] * block_macs(dd, length + 1) + (length + 1) * dd * 3 * p * p
    return encoder + decoder


def mlp_macs(widths: list[int]) -> int:
    """A projector / predictor: its Linear layers (BatchNorm and ReLU are no multiply-adds)."""
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def contrastive_macs(dims: dict, moco: dict) -> tuple[int, int]:
    """(the online forward of one view: encoder, 3-layer projector, 2-layer predictor; the momentum
    encoder's forward of one view: encoder and projector) of MoCo v3."""
    d, hidden, out = dims["embed_dim"], moco["mlp_dim"], moco["dim"]
    momentum = encoder_macs(dims) + mlp_macs([d, hidden, hidden, out])
    return momentum + mlp_macs([out, hidden, out]), momentum


def flops_per_image(model_cfg: dict, objective: str, num_classes: int) -> int:
    """A forward pass for one image of the objective's loss: both views for the contrastive loss
    (whose keys the landscape computes once, so they are not counted)."""
    if objective == "contrastive":
        return 2 * 2 * contrastive_macs(resolve_arch(model_cfg["arch"], with_decoder=False), model_cfg["moco"])[0]
    if objective == "pretext":
        return 2 * pretext_macs(resolve_arch(model_cfg["arch"], with_decoder=True), model_cfg["mask_ratio"])
    return 2 * classifier_macs(resolve_arch(model_cfg["arch"], with_decoder=False), num_classes)


def training_stages(model_cfg: dict) -> list[str]:
    """The training stages the workflow runs for a model: probe and fine-tune where the
    accuracy table or a landscape needs them; a given checkpoint skips its stage."""
    stages = [] if model_cfg["checkpoint"] else ["pretrain"]
    if model_cfg["method"] != "supervised":
        needed = set(model_cfg["accuracy"]) | set(methods.objectives(model_cfg))
        stages += [s for s in ("probe", "finetune") if s in needed and not model_cfg[s]["checkpoint"]]
    return stages


def stage_flops(model_cfg: dict, stage: str, num_classes: int, images: int) -> int:
    """FLOPs of one training stage on `images` training images per epoch."""
    epochs = model_cfg[stage]["epochs"]
    # A step's forward + backward: 3 forwards. SAM (sam or asam) takes two forward-backward passes a
    # step, the second at the perturbed weights: 6. What does not train runs once a step either way
    # (the second pass reuses it: loops.pretrain_mae, loops.linear_probe).
    trained = 6 if recipes.uses_sam(recipes.resolve(model_cfg, stage)["recipe"]) else 3
    if stage == "probe":
        # a frozen encoder (run once when its features are cached) under a trained linear head
        dims = resolve_arch(model_cfg["arch"], with_decoder=False)
        encoder_passes = 1 if recipes.probe_features_cached(model_cfg) else epochs
        return images * (encoder_passes * 2 * encoder_macs(dims) + epochs * trained * 2 * dims["embed_dim"] * num_classes)
    if stage == "pretrain" and model_cfg["method"] == "mocov3":  # + the momentum encoder on both views, once a step
        _, momentum = contrastive_macs(resolve_arch(model_cfg["arch"], with_decoder=False), model_cfg["moco"])
        return epochs * images * (trained * flops_per_image(model_cfg, "contrastive", num_classes) + 2 * 2 * momentum)
    teacher = 1 if stage == "pretrain" and model_cfg["method"] == "rcmae" else 0  # RC-MAE: + the EMA teacher's forward
    passes = trained + teacher  # RC-MAE: 4, with SAM 1 + 2 x 3 = 7
    return epochs * images * passes * flops_per_image(model_cfg, methods.stage_objective(model_cfg, stage), num_classes)


def default_train_images(config: dict) -> int | None:
    """Training images per epoch, where the config alone tells; None when nothing trains."""
    if not any(training_stages(m) for m in config["models"].values()):
        return None
    data = config["data"]
    if data["dataset"] == "digits":
        return DIGITS_IMAGES - int(round(DIGITS_IMAGES * data["test_fraction"]))  # the split of data.prepare.prepare
    if data["dataset"] == "imagefolder":
        return IMAGENET_TRAIN_IMAGES
    if data["dataset"] in FILE_TRAIN_IMAGES:
        return FILE_TRAIN_IMAGES[data["dataset"]]
    raise PlanError(f"the number of training images of data.dataset {data['dataset']} is not known from "
                    "the config: give it (plan --train-images N)")


def forwards(config: dict) -> list[tuple[str, str]]:
    """(model, objective) of every forward pass the plan needs a rate for: surfaces, then training."""
    pairs = [(name, o) for name, m in config["models"].items() for o in methods.objectives(m)]
    pairs += [(name, methods.stage_objective(m, s)) for name, m in config["models"].items()
              for s in training_stages(m)]
    return list(dict.fromkeys(pairs))


def hours(flops: float, tflops: float) -> float:
    return flops / (tflops * 1e12) / 3600


def surfaces(config: dict, num_classes: int, rate) -> list[dict]:
    """Cost of every surface and of one of its tiles; `rate(model, objective)` in TFLOP/s."""
    ls = config["landscape"]
    images = config["data"]["eval_samples"]
    points = int(ls["alpha"][2]) * int(ls["beta"][2])
    tiles = len(grid.tile_names(ls["alpha"], ls["beta"], ls["tile"]))
    tile_points = min(int(ls["tile"][0]), int(ls["alpha"][2])) * min(int(ls["tile"][1]), int(ls["beta"][2]))
    paths = config["trajectories"]
    plane_points = int(paths["alpha"][2]) * int(paths["beta"][2])
    plane_tiles = len(grid.tile_names(paths["alpha"], paths["beta"], paths["tile"]))
    plane_tile_points = (min(int(paths["tile"][0]), int(paths["alpha"][2]))
                         * min(int(paths["tile"][1]), int(paths["beta"][2])))
    grids = [(name, objective, f"{name}/{objective}", points, tiles, tile_points)
             for name, m in config["models"].items() for objective in methods.objectives(m)]
    grids += [(name, objective, f"{name}/{stage} path plane", plane_points, plane_tiles, plane_tile_points)
              for name, stage in trajectory_runs(config)
              for objective in [methods.stage_objective(config["models"][name], stage)]]
    out = []
    for name, objective, label, n_points, n_tiles, per_tile in grids:
        flops = flops_per_image(config["models"][name], objective, num_classes)
        total = flops * images * n_points
        out.append({"name": label, "model": name, "objective": objective, "flops_per_image": flops, "images": images,
                    "points": n_points, "tiles": n_tiles, "total_flops": total,
                    "gpu_hours": hours(total, rate(name, objective)),
                    "tile_gpu_hours": hours(flops * images * per_tile, rate(name, objective))})
    return out


def hessian_products(metrics: dict) -> int:
    """Most Hessian-vector products of one surface's `hessian` job (fewer when Lanczos meets
    its tolerance): the Lanczos steps, one residual product per reported eigenvalue, the trace
    probes and the density's runs."""
    h = metrics["hessian"]
    if not h["enabled"]:
        return 0
    return h["lanczos_steps"] + h["top_k"] + 1 + h["trace_probes"] + h["density_runs"] * h["density_steps"]


def metrics_cost(config: dict, num_classes: int, rate) -> list[dict]:
    """Cost of every surface's metric jobs: Hessian-vector products (at most) at HVP_FORWARDS
    forward passes each, flatness evaluations, and the ratio map when enabled."""
    metrics, images = config["metrics"], config["data"]["eval_samples"]
    flat = metrics["flatness"]
    evaluations = 1 + flat["samples"] * len(flat["sigmas"]) if flat["enabled"] else 0
    ratio = metrics["ratio_map"]
    ratio_products = (int(ratio["alpha"][2]) * int(ratio["beta"][2]) * (ratio["lanczos_steps"] + 2)
                      if ratio["enabled"] else 0)
    products = hessian_products(metrics)
    out = []
    for name, m in config["models"].items():
        for objective in methods.objectives(m):
            flops = flops_per_image(m, objective, num_classes) * images
            total = flops * (HVP_FORWARDS * (products + ratio_products) + evaluations)
            out.append({"name": f"{name}/{objective}", "hessian_products": products, "flatness_evaluations":
                        evaluations, "ratio_map_products": ratio_products, "total_flops": total,
                        "gpu_hours": hours(total, rate(name, objective))})
    return out


def trajectory_runs(config: dict) -> list[tuple[str, str]]:
    """(model, stage) of every training the trajectories replay."""
    paths = config["trajectories"]
    return [(name, stage) for name in paths["models"] for stage in paths["stages"]]


def training(config: dict, num_classes: int, images: int, rate) -> list[dict]:
    """Cost of every training stage on `images` training images per epoch, and of every replay
    of one for its trajectory (the same training again)."""
    runs = [(name, stage, f"{name}/{stage}") for name, model_cfg in config["models"].items()
            for stage in training_stages(model_cfg)]
    runs += [(name, stage, f"{name}/{stage} replay") for name, stage in trajectory_runs(config)]
    out = []
    for name, stage, label in runs:
        model_cfg = config["models"][name]
        flops = stage_flops(model_cfg, stage, num_classes, images)
        tflops = rate(name, methods.stage_objective(model_cfg, stage))
        out.append({"name": label, "flops": flops, "images": images, "epochs": model_cfg[stage]["epochs"],
                    "tflops": tflops, "gpu_hours": hours(flops, tflops)})
    return out


def with_variants(config: dict) -> dict[str, dict]:
    """The models of each part of the plan, by name: the config's own and its studies' variants.
    Every variant has surfaces; a variant on other directions or another evaluation subset has
    no training (it shares its training's), and its Hessian and flatness are its training's on
    that subset. Variants train what their surfaces need: no fine-tuning for the accuracy table."""
    variants = studies.variants(config)
    return {"surfaces": {**config["models"], **{n: v.model for n, v in variants.items()}},
            "training": {**config["models"], **{n: {**v.model, "accuracy": []} for n, v in variants.items()
                                                if v.trains}},
            "metrics": {**config["models"], **{n: v.model for n, v in variants.items() if n == v.measured_as}}}


def plan(config: dict, tflops: float = DEFAULT_TFLOPS, num_classes: int = 1000, train_images: int | None = None,
         measured: dict | None = None) -> dict:
    """Cost of every surface (and of one tile) and of every training stage of a schema-validated
    config, its studies' variants included, at `tflops` sustained or, when `measured`
    (`throughput.measure`) is given, at the rate each forward pass achieved there (a variant at
    its base's rate). train_images: per epoch (default_train_images)."""
    if train_images is None:
        train_images = default_train_images(config)
    models = with_variants(config)
    bases = {n: v.base for n, v in studies.variants(config).items()}

    def rate(name, objective):
        if measured is None:
            return tflops
        # achieved TFLOP/s: FLOPs counted by hand x images/s measured
        ips = measured["images_per_s"][bases.get(name, name), objective]
        return flops_per_image(models["surfaces"][name], objective, num_classes) * ips / 1e12

    result = {"tflops": None if measured else tflops, "num_classes": num_classes,
              "surfaces": surfaces({**config, "models": models["surfaces"]}, num_classes, rate),
              "training": training({**config, "models": models["training"]}, num_classes, train_images, rate),
              "metrics": metrics_cost({**config, "models": models["metrics"]}, num_classes, rate)}
    if measured:
        result.update(device=measured["device"], precision=measured["precision"])
        for entry in result["surfaces"]:
            name, objective = entry["model"], entry["objective"]
            entry["measured_images_per_s"] = measured["images_per_s"][bases.get(name, name), objective]
            entry["measured_tflops"] = rate(name, objective)
    result["total_gpu_hours"] = math.fsum(s["gpu_hours"] for s in result["surfaces"])
    result["total_training_gpu_hours"] = math.fsum(s["gpu_hours"] for s in result["training"])
    result["total_metrics_gpu_hours"] = math.fsum(s["gpu_hours"] for s in result["metrics"])
    return result


def table(result: dict) -> str:
    measured = result["tflops"] is None
    width = max(24, *(len(row["name"]) + 1 for part in ("surfaces", "training", "metrics") for row in result[part]))
    lines = [f"{'surface':{width}s} {'FLOP/image':>10s} {'images':>7s} {'points':>7s} {'FLOP':>10s} "
             f"{'GPU-hours':>10s} {'per tile':>10s}" + (f" {'images/s':>9s} {'TFLOP/s':>8s}" if measured else "")]
    for s in result["surfaces"]:
        lines.append(f"{s['name']:{width}s} {s['flops_per_image']:10.3g} {s['images']:7d} {s['points']:7d} "
                     f"{s['total_flops']:10.3g} {s['gpu_hours']:10.3g} {s['tile_gpu_hours']:10.3g}"
                     + (f" {s['measured_images_per_s']:9.1f} {s['measured_tflops']:8.3g}" if measured else ""))
    rate = (f"the rates measured on {result['device']} ({result['precision']})" if measured
            else f"{result['tflops']:g} TFLOP/s sustained")
    lines.append(f"total {result['total_gpu_hours']:.3g} GPU-hours at {rate}")
    lines += ["", f"{'training':{width}s} {'FLOP':>10s} {'images':>9s} {'epochs':>7s} {'TFLOP/s':>8s} "
                  f"{'GPU-hours':>10s}"]
    for t in result["training"]:
        lines.append(f"{t['name']:{width}s} {t['flops']:10.3g} {t['images']:9d} {t['epochs']:7d} {t['tflops']:8.3g} "
                     f"{t['gpu_hours']:10.3g}")
    # a training step's backward is assumed to run at its forward's rate
    rate = "the forward rates measured" if measured else rate
    lines.append(f"total {result['total_training_gpu_hours']:.3g} GPU-hours of training at {rate}")
    lines += ["", f"{'metrics':{width}s} {'HVPs':>6s} {'flatness':>9s} {'ratio map':>10s} {'FLOP':>10s} "
                  f"{'GPU-hours':>10s}"]
    for m in result["metrics"]:
        lines.append(f"{m['name']:{width}s} {m['hessian_products']:6d} {m['flatness_evaluations']:9d} "
                     f"{m['ratio_map_products']:10d} {m['total_flops']:10.3g} {m['gpu_hours']:10.3g}")
    lines.append(f"total {result['total_metrics_gpu_hours']:.3g} GPU-hours of metrics at {rate} (a Hessian-vector "
                 f"product counted as {HVP_FORWARDS} forward passes)")
    return "\n".join(lines)


def command(configfile, *, tflops=None, measure=False, num_classes=None, train_images=None, json_out=None,
            device="auto", precision=None, batch_size=None, measure_seconds=2.0) -> dict:
    """The plan stage: validate `configfile` as the workflow does (defaults filled), cost it at
    `tflops` or at the rates measured here (`measure`), print the table, save `json_out`."""
    config = yaml.safe_load(Path(configfile).read_text())
    try:
        configcheck.validate_config(config, paths.SCHEMA)
    except configcheck.ConfigError as err:
        raise SystemExit(f"plan: {configfile}: {err}") from None
    num_classes = num_classes or NUM_CLASSES.get(config["data"]["dataset"], 1000)
    try:
        train_images = train_images or default_train_images(config)
    except PlanError as err:  # before measuring: say it at once
        raise SystemExit(f"plan: {err}") from None
    measured = None
    if measure:
        from vitlandscape.landscape import throughput
        measured = throughput.measure(config, forwards(config), num_classes, device, precision, batch_size,
                                      measure_seconds)
    result = plan(config, tflops or DEFAULT_TFLOPS, num_classes, train_images, measured)
    print(table(result))
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
    return result
