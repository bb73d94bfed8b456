"""Several grid points per pass: does evaluating K perturbed weight sets in one call pay?

On a default-size model (config/config.yaml) at random initialisation (speed does not depend
on the weights' values) with the default evaluation set's shape (256 images of 16 x 16 in
one batch; pretext: the fixed masks of mask seed 0 at ratio 0.75), for each K it times
  engine  the library's path: surface.evaluate_points, one point at a time (weights moved in
          place by surface.Perturbation, Objective.evaluate per point);
  vmap    K points in one call: torch.func.vmap over K stacked weight sets, each handed to the
          objective's own Objective.batch_sums by torch.func.functional_call (`evaluate_many`);
  shared  not a landscape method but its bound: one Objective.evaluate over K copies of the
          evaluation set in batches K times as large, the weights shared. It does the same
          arithmetic as K points in one pass with every kernel fused and no per-point weights,
          so no way of stacking weights (vmap or hand-written batched matmuls) beats it by much:
          where shared does not beat the engine, batching points cannot pay.
It first checks that vmap gives the engine's loss (and accuracy) at every point it times, then
runs the methods interleaved (engine, vmap, shared, engine, ...) and keeps each one's fastest
round, in wall time and in this process's CPU time: other work on the machine slows every
method alike, the minimum is the least disturbed run.

    PYTHONPATH=workflow python workflow/scripts/multipoint_bench.py --threads 1 --objective pretext --out mp.json
    PYTHONPATH=workflow python workflow/scripts/multipoint_bench.py --device cuda --ks 1,8,64 --out mp_cuda.json
"""
import argparse
import contextlib
import json
import os
import time
import warnings

import numpy as np
import torch
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from vitlandscape import devices
from vitlandscape.landscape import directions, objectives, surface
from vitlandscape.landscape.bench import cpu_model
from vitlandscape.models.arch import build_mae
from vitlandscape.models.classifier import build_classifier

# config/config.yaml: models.mae.arch (the supervised ViT has the encoder part)
DEFAULT_ARCH = {"img_size": 16, "patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 4,
                "decoder_embed_dim": 32, "decoder_depth": 2, "decoder_num_heads": 4}
RTOL = 1e-5  # vmap against the engine in float32, relative
METHODS = ("engine", "vmap", "shared")


class _BatchSums(torch.nn.Module):
    """`objective.batch_sums` as a module call, so that functional_call can put one point's
    weights (named `model.<param>` here) in place of the model's for the call."""

    def __init__(self, objective: objectives.Objective):
        super().__init__()
        self.model = objective.model
        self.objective = objective

    def forward(self, batch):
        loss_sum, count, correct = self.objective.batch_sums(batch)
        # vmap returns tensors only; count and correct are Python ints for some objectives
        return loss_sum, torch.as_tensor(count, dtype=torch.float64), torch.as_tensor(correct)


def stacked_weights(model: torch.nn.Module, dirs: dict, points) -> dict:
    """{name: [K, *shape]}: theta + a_k dx + b_k dy for each perturbed parameter and point k."""
    params = dict(model.named_parameters())
    a, b = torch.tensor(points, dtype=torch.float64).T
    out = {}
    for name, dx in dirs["x"].items():
        theta = params[name].detach()
        shape = (len(points),) + (1,) * theta.ndim
        moved = theta + a.to(theta).view(shape) * dx.to(theta)
        dy = dirs["y"].get(name)
        out[name] = moved if dy is None else moved + b.to(theta).view(shape) * dy.to(theta)
    return out


def attention(device: torch.device):
    """The CPU's fused attention kernel has no vmap batching rule (vmap would loop over the
    points), the math path batches; CUDA's fused kernels have batching rules."""
    return sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else contextlib.nullcontext()


@torch.inference_mode()
def evaluate_many(objective: objectives.Objective, dirs: dict, points) -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy at each (a, b) of `points` (directions {'x': ..., 'y': ...}), all
    points in one vmapped pass per batch: the numbers of surface.evaluate_points, the
    model's own weights untouched. No random op runs (the pretext masks come from the
    objective's fixed noise): randomness='error' keeps it so."""
    module = _BatchSums(objective)
    weights = {f"model.{name}": w for name, w in stacked_weights(objective.model, dirs, points).items()}
    per_point = vmap(lambda w, batch: functional_call(module, w, (batch,)), in_dims=(0, None), randomness="error")
    total = count = correct = 0.0
    device = next(objective.model.parameters()).device
    with devices.precision(objective.precision, device), attention(device):
        for batch in objective.batches:
            loss_sum, n, right = per_point(weights, batch)
            total, count, correct = total + loss_sum, count + n, correct + right
    if objective.name == "pretext":  # averages as Objective.evaluate takes them
        return (total / count).cpu().numpy(), np.full(len(points), np.nan)
    n = objective.info["eval_samples"]
    return (total / n).cpu().numpy(), (correct.double() / n).cpu().numpy()


def default_model(objective: str) -> torch.nn.Module:
    if objective == "pretext":
        return build_mae(DEFAULT_ARCH)
    encoder = {k: DEFAULT_ARCH[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads")}
    return build_classifier(encoder, 10, "supervised")


def build(objective: str, images: int, batch_size: int, device: torch.device, copies: int = 1,
          model: torch.nn.Module | None = None) -> objectives.Objective:
    """The objective of `model` (default: a default-size one at random initialisation) on
    `images` random images with labels of 10 classes, the set repeated `copies` times."""
    torch.manual_seed(0)
    size = DEFAULT_ARCH["img_size"]
    x = torch.randn(images, 3, size, size).repeat(copies, 1, 1, 1).to(device)
    labels = torch.randint(0, 10, (images,)).repeat(copies).to(device)
    model = default_model(objective) if model is None else model
    return objectives.from_model(objective, model.to(device).eval(), x, labels, batch_size, mask_seed=0)


def grid_points(k: int) -> list[tuple[float, float]]:
    """k distinct points of the default 21 x 21 grid on [-1, 1]^2, spread over it."""
    axis = np.linspace(-1.0, 1.0, 21)
    index = np.random.default_rng(k).choice(21 * 21, size=k, replace=False)
    return [(float(axis[i // 21]), float(axis[i % 21])) for i in index]


def agreement(objective, perturbation, dirs, points) -> tuple[float, list[str]]:
    """Max relative loss difference of vmap against the engine at `points` (accuracies must
    be equal), and the ops vmap ran one point at a time for want of a batching rule."""
    losses, accs = surface.evaluate_points(objective, perturbation, points, desc="engine")
    # off by default: torch warns about each op vmap runs in a loop only when asked to
    torch._C._functorch._set_vmap_fallback_warning_enabled(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            many_losses, many_accs = evaluate_many(objective, dirs, points)
    finally:
        torch._C._functorch._set_vmap_fallback_warning_enabled(False)
    if objective.name != "pretext" and not np.array_equal(accs, many_accs):
        raise SystemExit(f"accuracies differ: one at a time {accs}, vmap {many_accs}")
    fallbacks = sorted({str(w.message).split("batching rule for ")[1].split(".")[0]
                        for w in caught if "batching rule for " in str(w.message)})
    return float(np.max(np.abs(many_losses - losses) / np.abs(losses))), fallbacks


def seconds(fn, device: torch.device) -> tuple[float, float]:
    """(wall, CPU) seconds of fn(); the CPU time of this process does not count the time
    other work holds the cores, which on a shared machine can be most of the wall time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(objective, perturbation, dirs, k: int, args, device) -> dict:
    """points/s of each method at K = k: the fastest of `args.rounds` interleaved rounds, each
    round evaluating at least `args.points` points (whole calls of k points)."""
    points = grid_points(k)
    calls = max(1, args.points // k)
    shared = build(objective.name, args.images, k * args.batch_size, device, copies=k, model=objective.model)
    runs = {"engine": lambda: surface.evaluate_points(objective, perturbation, points, desc="engine"),
            "vmap": lambda: evaluate_many(objective, dirs, points),
            "shared": shared.evaluate}
    for run in runs.values():
        run()  # warm-up
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            times[name].append(seconds(lambda: [run() for _ in range(calls)], device))
    rate = {name: k * calls / min(wall for wall, _ in t) for name, t in times.items()}
    cpu_rate = {name: k * calls / min(cpu for _, cpu in t) for name, t in times.items()}
    row = {"k": k, "points_per_round": k * calls, "seconds_per_round": times,
           **{f"{name}_points_per_s": rate[name] for name in METHODS},
           **{f"{name}_points_per_cpu_s": cpu_rate[name] for name in METHODS},
           "vmap_speedup": rate["vmap"] / rate["engine"], "shared_speedup": rate["shared"] / rate["engine"],
           "vmap_cpu_speedup": cpu_rate["vmap"] / cpu_rate["engine"],
           "shared_cpu_speedup": cpu_rate["shared"] / cpu_rate["engine"]}
    print(f"{objective.name:10s} {torch.get_num_threads():2d} thr  K={k:3d}  points/s "
          + " ".join(f"{name} {rate[name]:6.1f}" for name in METHODS)
          + f"  speedup vmap {row['vmap_speedup']:.2f} shared {row['shared_speedup']:.2f}"
          + f" | per CPU-s: vmap {row['vmap_cpu_speedup']:.2f} shared {row['shared_cpu_speedup']:.2f}", flush=True)
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--ks", default="1,2,4,8,16", help="points per batched call, comma-separated")
    parser.add_argument("--objective", choices=("pretext", "supervised"), default="pretext")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--images", type=int, default=256, help="evaluation images (data.eval_samples)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass (landscape.batch_size)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per K")
    parser.add_argument("--points", type=int, default=32, help="points per method and round (whole calls of K)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = devices.resolve(args.device)
    ks = [int(k) for k in args.ks.split(",")]

    objective = build(args.objective, args.images, args.batch_size, device)
    dirs = directions.split(directions.make(objective.model, seed=0))
    perturbation = surface.Perturbation(objective.model, dirs)
    checks = [agreement(objective, perturbation, dirs, grid_points(k)) for k in ks]  # every point timed below
    diff, fallbacks = max(d for d, _ in checks), sorted({op for _, ops in checks for op in ops})
    print(f"{args.objective}: vmap vs engine at the {sum(ks)} points of K = {args.ks}: max relative loss difference "
          f"{diff:.2e}; ops vmap loops over: {', '.join(fallbacks) or 'none'}")
    if not diff <= RTOL:
        raise SystemExit(f"vmap's losses differ from the engine's by {diff:.2e} > {RTOL:.0e}: no timing")
    result = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                          "device": device.type, "torch": torch.__version__,
                          "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()},
              "objective": args.objective, "arch": DEFAULT_ARCH, "images": args.images,
              "batch_size": args.batch_size, "rounds": args.rounds,
              "timing": "fastest round per method, wall and process CPU time",
              "max_rel_diff": diff, "rtol": RTOL, "vmap_fallbacks": fallbacks,
              "rows": [measure(objective, perturbation, dirs, k, args, device) for k in ks]}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
