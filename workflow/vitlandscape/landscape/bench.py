"""Grid-evaluation speed, measured on one model, data set, pair of directions and grid.

`bench` (python -m vitlandscape bench) computes the same square grid four ways:
  ceiling          plain forward passes of the objective over the evaluation set (weights fixed)
  engine           ours: surface.evaluate_tile, the weights moved in place by surface.Perturbation
  loss_landscapes  the PyPI package's planar_interpolation, fed our directions (see PACKAGE_POINTS)
  li_loop          as Li et al.'s loss-landscape tool: per point a copy of the model, load_state_dict
                   of theta + a dx + b dy, a DataLoader pass with a per-image transform
Each method runs in a fresh process forked from a server that has imported the library
and computed nothing: no allocator state or thread pool of one method carries into the
next, and each gets a peak-memory reading of its own. The peers' losses are checked
against the engine's (BenchError names the worst point) before any ratio is computed.

"""
import copy
import dataclasses
import importlib.metadata
import multiprocessing
import multiprocessing.forkserver
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import loss_landscapes
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from loss_landscapes.metrics import Metric
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import Normalize

from vitlandscape import devices
from vitlandscape.data import common
from vitlandscape.data import prepare as data_prepare
from vitlandscape.landscape import bench_cases, directions, objectives, surface
from vitlandscape.models.masking import eval_noise
from vitlandscape.storage import outputs

RTOL = 1e-4  # peers' losses against the engine's, relative
PEERS = ("loss_landscapes", "li_loop")
PACKAGE_POINTS = (
    "loss_landscapes.planar_interpolation(start, end_one, end_two, steps=n) evaluates "
    "start + i (end_one - start)/n + k (end_two - start)/n, i < n, walking columns in a serpentine: "
    "k = j + 1 on even i, k = j on odd i (its 3.0.6 source). Given start = theta + alpha_0 dx + beta_0 dy "
    "and end_* = start + n steps along dx / dy, its points are the grid's except on even alpha columns, "
    "where it skips beta_0 and evaluates beta_0 + n steps, beyond the grid: those are not compared. "
    "(Its random_plane draws its own directions, so it cannot evaluate our plane.)")


class BenchError(RuntimeError):
    pass


@dataclasses.dataclass
class Setup:
    """What every method is given: the trained model's objective on the device, the
    directions, the grid, and the evaluation set on the CPU for the DataLoader."""
    objective: objectives.Objective
    dirs: dict  # {'x': {name: dx}, 'y': {name: dy}}, on the CPU
    alphas: np.ndarray
    betas: np.ndarray
    images: torch.Tensor  # normalised [N, 3, S, S]
    extras: torch.Tensor  # per image: its label, or its mask noise for the pretext loss
    batch_size: int

    @property
    def device(self) -> torch.device:
        return next(self.objective.model.parameters()).device


def prepare(case: dict) -> Setup:
    """`case`: model settings, objective, checkpoint, data, landscape settings, grid side, device."""
    ls, model_cfg = case["landscape"], case["model"]
    device = devices.resolve(case["device"])
    prepared = data_prepare.load_prepared(case["data"])
    model, _ = objectives.load(case["objective"], case["checkpoint"], model_cfg)
    stored, labels = data_prepare.eval_set(prepared, device, normalised=False)
    objective = objectives.from_model(case["objective"], model.to(device), stored, labels, ls["batch_size"],
                                      ls["mask_seed"], model_cfg["mask_ratio"])
    dirs = directions.split(directions.make(model, ls["direction_seed"], ls["normalization"], ls["perturb_1d"],
                                            ls["perturb_frozen"], ls["orthogonal"]))
    images, labels = data_prepare.eval_set(prepared, "cpu")
    extras = labels if case["objective"] != "pretext" else eval_noise(len(images), model.patch_embed.num_patches,
                                                                      ls["mask_seed"])
    return Setup(objective, dirs, *grid_axes(case), images, extras, ls["batch_size"])


def grid_axes(case: dict) -> tuple[np.ndarray, np.ndarray]:
    """alpha and beta of the bench's square grid: `grid` points over each landscape range."""
    ls = case["landscape"]
    return tuple(np.linspace(lo, hi, case["grid"]) for lo, hi, _ in (ls["alpha"], ls["beta"]))


# --- the methods: each returns None (ceiling) or (losses, compared) on the [n, n] grid ---

def ceiling(s: Setup):
    for _ in range(s.alphas.size * s.betas.size):
        s.objective.evaluate()


def engine(s: Setup):
    losses, _ = surface.evaluate_tile(s.objective, surface.Perturbation(s.objective.model, s.dirs), s.alphas, s.betas)
    return losses, np.ones(losses.shape, bool)


def state_at(theta: dict, dirs: dict, a: float, b: float) -> dict:
    """The state dict theta + a dx + b dy (parameters without a direction, and buffers, as in theta)."""
    return {k: v + a * dirs["x"][k] + b * dirs["y"][k] if k in dirs["x"] else v for k, v in theta.items()}


def moved_copy(model: torch.nn.Module, theta: dict, dirs: dict, a: float, b: float) -> torch.nn.Module:
    net = copy.deepcopy(model)
    net.load_state_dict(state_at(theta, dirs, a, b))
    return net


def on_device(dirs: dict, device: torch.device) -> dict:
    return {axis: {k: v.to(device) for k, v in d.items()} for axis, d in dirs.items()}


class ObjectiveMetric(Metric):
    """Our objective's loss as a loss_landscapes metric, on the model the package hands it."""

    def __init__(self, objective: objectives.Objective):
        super().__init__()
        self.objective = objective

    def __call__(self, model_wrapper) -> float:
        return dataclasses.replace(self.objective, model=model_wrapper.modules[0]).evaluate()[0]


def package_on_grid(raw: np.ndarray):
    """planar_interpolation's [n, n] output placed on our grid (PACKAGE_POINTS): -> (losses, compared)."""
    n = len(raw)
    losses, compared = np.full((n, n), np.nan), np.zeros((n, n), bool)
    for i in range(n):
        shift = 1 - i % 2  # even columns start one beta step in
        losses[i, shift:] = raw[i, :n - shift]
        compared[i, shift:] = True
    return losses, compared


def loss_landscapes_grid(s: Setup):
    """The package's plane through three model copies at the corners of our grid, one step
    beyond it along each axis so that its step (distance / n) is ours."""
    if len(s.alphas) != len(s.betas):
        raise BenchError("loss_landscapes walks square grids only")
    model, n = s.objective.model, len(s.alphas)
    theta, dirs = model.state_dict(), on_device(s.dirs, s.device)
    a0, b0 = s.alphas[0], s.betas[0]
    da, db = n * (s.alphas[1] - a0), n * (s.betas[1] - b0)
    corners = [moved_copy(model, theta, dirs, a, b) for a, b in ((a0, b0), (a0 + da, b0), (a0, b0 + db))]
    raw = loss_landscapes.planar_interpolation(*corners, ObjectiveMetric(s.objective), steps=n)
    return package_on_grid(np.asarray(raw, dtype=float))


class PixelImages(Dataset):
    """The evaluation images as pixels in [0, 1], normalised one by one by a transform, as
    the loaders of Li et al.'s tool do (ToTensor + Normalize)."""

    def __init__(self, images: torch.Tensor, extras: torch.Tensor):
        mean, std = common.IMAGENET_MEAN, common.IMAGENET_STD
        self.pixels, self.extras = images * std + mean, extras
        self.transform = Normalize(mean.flatten().tolist(), std.flatten().tolist())

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i):
        return self.transform(self.pixels[i]), self.extras[i]


@torch.inference_mode()
def loader_loss(net: torch.nn.Module, loader: DataLoader, pretext: bool, mask_ratio: float,
                device: torch.device) -> float:
    """The mean loss over the loader: batch means weighted by batch size, as Li et al.'s eval_loss
    (exact for the pretext loss too: every image masks the same number of patches)."""
    total = 0.0
    for x, extra in loader:
        x, extra = x.to(device), extra.to(device)
        loss = net(x, mask_ratio, extra)[0] if pretext else F.cross_entropy(net(x), extra)
        total += loss.item() * len(x)
    return total / len(loader.dataset)


def li_loop(s: Setup):
    """Each point from scratch: a copy of the model, its state loaded, the images through the
    DataLoader (in this process: on 2 cores, loader workers would take turns with the model)."""
    model, device = s.objective.model, s.device
    theta, dirs = model.state_dict(), on_device(s.dirs, device)
    loader = DataLoader(PixelImages(s.images, s.extras), batch_size=s.batch_size, shuffle=False)
    pretext, mask_ratio = s.objective.name == "pretext", s.objective.info.get("mask_ratio")
    losses = np.empty((len(s.alphas), len(s.betas)))
    for i, a in enumerate(s.alphas):
        for j, b in enumerate(s.betas):
            losses[i, j] = loader_loss(moved_copy(model, theta, dirs, a, b), loader, pretext, mask_ratio, device)
    return losses, np.ones(losses.shape, bool)


METHODS = {"ceiling": ceiling, "engine": engine, "loss_landscapes": loss_landscapes_grid, "li_loop": li_loop}


# --- measuring one method in a fresh process ---

def memory_measure(device: torch.device) -> str:
    if device.type == "cuda":
        return ("torch.cuda.max_memory_allocated of a fresh process per method, from after loading the "
                "model, data and directions (peak reset there) to the method's end; added = peak minus "
                "memory_allocated at that start")
    return ("peak resident set size (VmHWM, reset through /proc/self/clear_refs) of a fresh process per "
            "method, from after loading the model, data and directions to the method's end; added = peak "
            "minus the resident size at that start")


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise BenchError(f"/proc/self/status has no {field}")


def _reset_peak(device: torch.device) -> float:
    """Restart the peak-memory count; -> memory in use now (MB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2 ** 20
    Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
    return _rss_mb("VmRSS")


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return _rss_mb("VmHWM")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(run, case: dict) -> dict:
    """Seconds, grid and peak memory of `run(setup)` in this process."""
    torch.set_num_threads(case["threads"])
    s = prepare(case)
    base = _reset_peak(s.device)
    s.objective.evaluate()  # warm-up, alike for every method
    _synchronize(s.device)
    start = time.perf_counter()
    grid = run(s)
    _synchronize(s.device)
    seconds = time.perf_counter() - start
    peak = _peak(s.device)
    return {"seconds": seconds, "grid": grid, "eval_images": len(s.images), "peak_memory_mb": peak,
            "added_memory_mb": peak - base}


def forkserver_context():
    """The forkserver context, its server started with this module imported (once per process)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    # Python 3.11's server ignores the caller's sys.path (pytest's `pythonpath`, for one) and
    # silently skips a preload it cannot import: hand it the library through PYTHONPATH.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), saved]))
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    return context


def isolated(run, case: dict) -> dict:
    """`measure(run, case)` in a process of its own, forked from a server that has imported
    this module but run nothing: forking a process whose OpenMP threads have run hangs the
    child, and CUDA cannot be used after a fork of a process that has touched it."""
    with ProcessPoolExecutor(1, mp_context=forkserver_context()) as pool:
        return pool.submit(measure, run, case).result()


# --- comparing and reporting ---

def check_agreement(method: str, engine_losses: np.ndarray, losses: np.ndarray, compared: np.ndarray,
                    alphas, betas, rtol: float = RTOL) -> float:
    """Max relative difference of `method`'s losses from the engine's on the points both
    evaluate; BenchError naming the worst point when it exceeds `rtol` (NaN counts as off)."""
    rel = np.where(compared, np.abs(losses - engine_losses) / np.abs(engine_losses), 0.0)
    rel = np.nan_to_num(rel, nan=np.inf)
    i, j = np.unravel_index(np.argmax(rel), rel.shape)
    if not rel[i, j] <= rtol:
        raise BenchError(f"{method} disagrees with the engine at (alpha, beta) = ({alphas[i]:.6g}, {betas[j]:.6g}): "
                         f"loss {losses[i, j]:.8g} against {engine_losses[i, j]:.8g}, relative difference "
                         f"{rel[i, j]:.3g} > rtol {rtol:g}")
    return float(rel.max())


def bench_surface(case: dict, repeats: int) -> dict:
    """Every method on one surface, `repeats` rounds of one fresh process per method; each
    round's grids checked; a method's time is its fastest round (the least disturbed)."""
    rounds = [{name: isolated(run, case) for name, run in METHODS.items()} for _ in range(repeats)]
    alphas, betas = grid_axes(case)
    points, images = alphas.size * betas.size, rounds[0]["engine"]["eval_images"]
    methods = {}
    for name in METHODS:
        runs = [r[name] for r in rounds]
        seconds = min(m["seconds"] for m in runs)
        row = {"seconds": seconds, "seconds_per_round": [m["seconds"] for m in runs], "points": points,
               "points_per_s": points / seconds, "images_per_s": points * images / seconds,
               "peak_memory_mb": max(m["peak_memory_mb"] for m in runs),
               "added_memory_mb": max(m["added_memory_mb"] for m in runs)}
        if name in PEERS:
            row["compared_points"] = int(runs[0]["grid"][1].sum())
            row["max_rel_diff"] = max(check_agreement(name, r["engine"]["grid"][0], *r[name]["grid"], alphas, betas)
                                      for r in rounds)
        methods[name] = row
    per_point = {name: row["seconds"] / row["points"] for name, row in methods.items()}
    return {"surface": case["surface"], "checkpoint": str(case["checkpoint"]), "eval_images": images,
            "methods": methods,
            "efficiency": methods["engine"]["images_per_s"] / methods["ceiling"]["images_per_s"],
            "speedup": {name: per_point[name] / per_point["engine"] for name in PEERS}}


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: torch.device, threads: int) -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "loss_landscapes": importlib.metadata.version("loss-landscapes"), "threads": threads, "device": device.type,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()}


def compare(cases: list[dict], grid: int, threads: int, device: str, repeats: int = 1) -> dict:
    """The bench.json content for `cases` (dicts as `prepare` takes, without grid, threads
    and device); raises BenchError before returning if a peer's losses are off."""
    dev = devices.resolve(device)
    if grid < 2 or repeats < 1:
        raise BenchError(f"grid {grid}, repeats {repeats}: use 2 points per side or more, and 1 round or more")
    if dev.type == "cpu" and not Path("/proc/self/clear_refs").exists():
        raise BenchError("peak memory on the CPU is read from /proc (Linux); elsewhere use --device cuda")
    cases = [{**c, "grid": grid, "threads": threads, "device": dev.type} for c in cases]
    ls = cases[0]["landscape"]
    return {"machine": machine_info(dev, threads),
            "grid": {"side": grid, "points": grid * grid, "alpha": [*ls["alpha"][:2], grid],
                     "beta": [*ls["beta"][:2], grid], "batch_size": ls["batch_size"], "precision": "fp32"},
            "repeats": repeats, "rtol": RTOL, "memory": memory_measure(dev),
            "loss_landscapes_points": PACKAGE_POINTS, "surfaces": [bench_surface(c, repeats) for c in cases]}


def table(result: dict) -> str:
    m, g = result["machine"], result["grid"]
    device = m["device"] if m["device"] == "cpu" else f"{m['device']} ({m['device_name']})"
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} threads, device {device}",
             f"grid {g['side']} x {g['side']} on alpha {g['alpha'][:2]}, beta {g['beta'][:2]}, "
             f"batch {g['batch_size']}; times: the fastest of {result['repeats']} round(s)",
             f"memory: {result['memory']}",
             f"{'surface':16s} {'method':16s} {'points':>6s} {'seconds':>8s} {'points/s':>9s} {'images/s':>9s} "
             f"{'peak MB':>8s} {'added MB':>8s} {'max rel diff':>12s}  ratio"]
    for s in result["surfaces"]:
        for name, r in s["methods"].items():
            ratio = (f"efficiency {s['efficiency']:.3f}" if name == "engine" else
                     f"engine speedup {s['speedup'][name]:.3f}" if name in PEERS else "")
            diff = f"{r['max_rel_diff']:.1e}" if name in PEERS else "-"
            lines.append(f"{s['surface']:16s} {name:16s} {r['points']:6d} {r['seconds']:8.2f} "
                         f"{r['points_per_s']:9.1f} {r['images_per_s']:9.0f} {r['peak_memory_mb']:8.1f} "
                         f"{r['added_memory_mb']:8.1f} {diff:>12s}  {ratio}")
    return "\n".join(lines)


def command(config_path, surfaces, data, *, grid_points: int, threads: int, device: str, repeats: int, out) -> dict:
    """The bench stage: one grid by every method on the chosen surfaces of a finished run
    (its effective config at `config_path`), written to `out` and printed as a table."""
    config = yaml.safe_load(Path(config_path).read_text())
    try:
        cases = bench_cases.cases(config, surfaces, data)
    except ValueError as err:
        raise SystemExit(f"bench: {config_path} {err}") from None
    result = compare(cases, grid_points, threads, device, repeats)
    outputs.write_json(result, out)
    print(table(result))
    print(f"wrote {out}")
    return result
