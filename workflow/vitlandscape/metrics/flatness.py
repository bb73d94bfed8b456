"""Flatness under random perturbation: E[L(theta + sigma d)] - L(theta).

`d` is a Gaussian direction filter-normalised to the weights (as the landscape's
directions), so `sigma` is a relative scale: at sigma = 0.1 every perturbed filter moves by
a tenth of its norm. One direction per sample (seeds `seed`, `seed + 1`, ...); weights are
moved in place and restored. Reported per sigma: mean rise and its standard error over the
samples whose loss is finite, and `nonfinite_samples`, how many were not (a perturbation
under which the model diverged); with fewer than 2 finite samples the standard error is NaN,
with none the mean too.
"""
import math
import time

import numpy as np

from vitlandscape.landscape import directions, surface


def gaussian_flatness(objective, sigmas, samples: int, seed: int, normalization: str = "filter",
                      perturb_1d: bool = False, perturb_frozen: bool = False) -> dict:
    if samples < 2:
        raise ValueError("flatness needs at least 2 samples for a standard error")
    start = time.perf_counter()
    centre = objective.evaluate()[0]
    if not math.isfinite(centre):
        raise ValueError(f"the loss at the trained weights is {centre}: no rise can be measured from it")
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
            **summarise(rises), "evaluations": 1 + samples * len(sigmas), "seconds": time.perf_counter() - start}


def summarise(rises: np.ndarray) -> dict:
    """Mean rise, its standard error and the count of non-finite samples for each row
    (sigma) of `rises` [sigmas, samples], over that row's finite samples."""
    out = {"mean_rise": [], "stderr": [], "nonfinite_samples": []}
    for row in rises:
        finite = row[np.isfinite(row)]
        n = finite.size
        out["mean_rise"].append(float(finite.mean()) if n else math.nan)
        out["stderr"].append(float(finite.std(ddof=1) / math.sqrt(n)) if n >= 2 else math.nan)
        out["nonfinite_samples"].append(int(row.size - n))
    return out
