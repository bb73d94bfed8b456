"""Flatness under random perturbation: E[L(theta + sigma d)] - L(theta).

`d` is a Gaussian direction filter-normalised to the weights (as the landscape's
directions), so `sigma` is a relative scale: at sigma = 0.1 every perturbed filter moves by
a tenth of its norm. One direction per sample (seeds `seed`, `seed + 1`, ...); weights are
moved in place and restored. Reported per sigma: mean rise and its standard error.
"""
import math
import time

import numpy as np

from vitlandscape import directions, surface


def gaussian_flatness(objective, sigmas, samples: int, seed: int, normalization: str = "filter",
                      perturb_1d: bool = False, perturb_frozen: bool = False) -> dict:
    if samples < 2:
        raise ValueError("flatness needs at least 2 samples for a standard error")
    start = time.perf_counter()
    centre = objective.evaluate()[0]
    rises = np.empty((len(sigmas), samples))
    for s in range(samples):
        dirs = directions.make(objective.model, seed + s, normalization, perturb_1d, perturb_frozen)
        perturbation = surface.Perturbation(objective.model, {"x": directions.split(dirs)["x"], "y": {}})
        try:
            for k, sigma in enumerate(sigmas):
                perturbation.set(sigma)
                rises[k, s] = objective.evaluate()[0] - centre
        finally:
            perturbation.restore()
    return {"centre_loss": centre, "sigmas": [float(x) for x in sigmas], "samples": samples,
            "mean_rise": rises.mean(axis=1).tolist(),
            "stderr": (rises.std(axis=1, ddof=1) / math.sqrt(samples)).tolist(),
            "evaluations": 1 + samples * len(sigmas), "seconds": time.perf_counter() - start}
