"""Grid-evaluation speed: the tile engine against plain forward passes (its ceiling).

Both evaluate the same objective on the same in-memory evaluation set; the engine also
moves the weights to theta + a dx + b dy before each point. Their ratio is the engine's
efficiency. Prints one table with the machine it ran on.
"""
import os
import platform
import time

import numpy as np
import torch

from vitlandscape import data, devices, directions, objectives, surface


def _rate(fn, points: int) -> float:
    start = time.perf_counter()
    fn()
    return points / (time.perf_counter() - start)


def bench_objective(settings: dict, data_path, checkpoint, points: int, batch_size: int, device) -> dict:
    prepared = data.load_prepared(data_path)
    objective = objectives.build(settings["objective"], checkpoint, settings, prepared, batch_size, 0, device)
    dirs = directions.split(directions.make(objective.model, seed=0))
    perturbation = surface.Perturbation(objective.model, dirs)
    side = int(np.ceil(np.sqrt(points)))
    alphas, betas = np.linspace(-1, 1, side), np.linspace(-1, 1, side)
    objective.evaluate()  # warm-up
    forward = _rate(lambda: [objective.evaluate() for _ in range(side * side)], side * side)
    engine = _rate(lambda: surface.evaluate_tile(objective, perturbation, alphas, betas), side * side)
    return {"objective": settings["objective"], "model": settings["name"], "points": side * side,
            "eval_samples": len(prepared["eval_index"]), "engine_pts_per_s": engine,
            "forward_pts_per_s": forward, "efficiency": engine / forward}


def machine() -> str:
    device = "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name()
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads, device {device}")


def run(cases: list[tuple[dict, str]], data_path, points: int, batch_size: int, device: str) -> list[dict]:
    dev = devices.resolve(device)
    rows = [bench_objective(settings, data_path, ckpt, points, batch_size, dev) for settings, ckpt in cases]
    print(f"machine: {machine()}")
    print(f"{'model/objective':24s} {'points':>6s} {'eval imgs':>9s} {'engine pt/s':>11s} "
          f"{'forward pt/s':>12s} {'efficiency':>10s}")
    for r in rows:
        print(f"{r['model'] + '/' + r['objective']:24s} {r['points']:6d} {r['eval_samples']:9d} "
              f"{r['engine_pts_per_s']:11.1f} {r['forward_pts_per_s']:12.1f} {r['efficiency']:10.3f}")
    return rows
