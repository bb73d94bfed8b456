"""Metric stages that need the trained model: the Hessian at the trained weights and the
flatness under Gaussian perturbation, each measured on the surface's own evaluation set and
fixed masks, each written as one JSON file per (model, objective).

Each takes `settings`: the model's config entry plus `name`, `objective`, the `landscape`
keys that fix the evaluation (mask_seed, batch_size, device and the direction keys) and
its own `metrics` section (`hessian` or `flatness`), as the rules pass them.
"""
import time

import numpy as np
import xarray as xr

from vitlandscape.landscape import directions, grid, objectives, surface
from vitlandscape.landscape.settings import LandscapeSettings
from vitlandscape.metrics import flatness, hessian
from vitlandscape.storage.outputs import made_for, sha256, write_json, write_netcdf


def _curvature(op: hessian.HessianOperator, cfg: dict) -> dict:
    """Extreme eigenvalues, trace and spectral density of one Hessian, as the metrics file holds them."""
    found = hessian.lanczos(op, cfg["top_k"], cfg["lanczos_steps"], cfg["seed"], cfg["tolerance"])
    trace = hessian.hutchinson_trace(op, cfg["trace_probes"], cfg["seed"])
    density = hessian.spectral_density(op, cfg["density_runs"], cfg["density_steps"], cfg["seed"])
    return {**{k: found[k] for k in ("top_eigenvalues", "top_residuals", "min_eigenvalue", "min_residual",
                                     "ratio_min_max")},
            "lanczos": {"steps": found["lanczos_steps"], "max_steps": cfg["lanczos_steps"],
                        "tolerance": cfg["tolerance"], "products": found["products"], "seconds": found["seconds"]},
            "trace": {"value": trace["trace"], "stderr": trace["trace_stderr"], "probes": trace["probes"],
                      "products": trace["products"], "seconds": trace["seconds"]},
            "density": {**{k: density[k] for k in ("nodes", "weights", "runs", "products", "seconds")},
                        "steps": cfg["density_steps"]}}


def hessian_metrics(settings: dict, data_path, checkpoint, out) -> dict:
    """Top-k and smallest eigenvalues with residuals, Hutchinson trace and SLQ density of the
    Hessian of the objective's mean loss at the trained weights."""
    cfg = settings["metrics"]["hessian"]
    objective = objectives.for_stage(settings, data_path, checkpoint, LandscapeSettings.of(settings), cfg["batch_size"])
    start = time.perf_counter()
    op = hessian.HessianOperator(objective)
    centre = objective.evaluate()[0]
    print(f"{settings['name']}/{settings['objective']}: Hessian over {op.size:,} trainable parameters, "
          f"{objective.info['eval_samples']} images, loss {centre:.6g}")
    result = {**objectives.provenance(settings, checkpoint, objective), "parameters": op.size, "centre_loss": centre,
              **_curvature(op, cfg), "products": op.products, "seconds": time.perf_counter() - start}
    print(f"lambda_max {result['top_eigenvalues'][0]:.6g}, lambda_min {result['min_eigenvalue']:.6g}, "
          f"trace {result['trace']['value']:.6g} +- {result['trace']['stderr']:.2g}; "
          f"{op.products} Hessian-vector products in {result['seconds']:.1f} s")
    write_json(result, out)
    return result


def flatness_metrics(settings: dict, data_path, checkpoint, out) -> dict:
    """E[L(theta + sigma d)] - L(theta) for Gaussian directions d normalised as the surface's."""
    cfg, landscape = settings["metrics"]["flatness"], LandscapeSettings.of(settings)
    objective = objectives.for_stage(settings, data_path, checkpoint, landscape)
    found = flatness.gaussian_flatness(objective, cfg["sigmas"], cfg["samples"], cfg["seed"], landscape.normalization,
                                       landscape.perturb_1d, landscape.perturb_frozen)
    result = {**objectives.provenance(settings, checkpoint, objective), "seed": cfg["seed"],
              "normalization": landscape.normalization, **found}
    for sigma, rise, err, dropped in zip(found["sigmas"], found["mean_rise"], found["stderr"],
                                         found["nonfinite_samples"]):
        print(f"sigma {sigma:g}: loss rise {rise:.6g} +- {err:.2g} ({found['samples']} samples)")
        if dropped:
            print(f"WARNING: {settings['name']}/{settings['objective']} flatness at sigma {sigma:g}: {dropped} of "
                  f"{found['samples']} perturbed losses are not finite; the rise is the mean of the others")
    write_json(result, out)
    return result


def ratio_map(settings: dict, data_path, checkpoint, directions_path, out) -> xr.Dataset:
    """|lambda_min / lambda_max| of the full Hessian at points theta + a dx + b dy of a coarse
    grid in the surface's own plane (Li et al. 2018, Fig. 7): near 0 the loss is locally
    convex, large values mark strong negative curvature."""
    cfg = settings["metrics"]["ratio_map"]
    objective = objectives.for_stage(settings, data_path, checkpoint, LandscapeSettings.of(settings),
                                     settings["metrics"]["hessian"]["batch_size"])
    dirs, meta = directions.load(directions_path)
    made_for(checkpoint, meta, f"directions {directions_path} were made")
    perturbation = surface.Perturbation(objective.model, dirs)
    alphas, betas = grid.axis(cfg["alpha"]), grid.axis(cfg["beta"])
    fields = {k: np.full((len(alphas), len(betas)), np.nan) for k in ("ratio", "lambda_max", "lambda_min")}
    op = hessian.HessianOperator(objective)
    try:
        for i, a in enumerate(alphas):
            for j, b in enumerate(betas):
                perturbation.set(float(a), float(b))
                found = hessian.lanczos(op, 1, cfg["lanczos_steps"], settings["metrics"]["hessian"]["seed"],
                                        cfg["tolerance"])
                fields["ratio"][i, j] = found["ratio_min_max"]
                fields["lambda_max"][i, j] = found["top_eigenvalues"][0]
                fields["lambda_min"][i, j] = found["min_eigenvalue"]
                print(f"({a:+.3f}, {b:+.3f}): lambda_max {found['top_eigenvalues'][0]:.4g}, "
                      f"lambda_min {found['min_eigenvalue']:.4g}, ratio {found['ratio_min_max']:.4f}")
    finally:
        perturbation.restore()
    attrs = {**objectives.provenance(settings, checkpoint, objective), "directions_sha256": sha256(directions_path),
             **{k: meta.get(k, "?") for k in ("normalization", "perturb_1d", "perturb_frozen")},
             "lanczos_steps": cfg["lanczos_steps"], "tolerance": str(cfg["tolerance"]), "products": op.products}
    ds = xr.Dataset({k: (("alpha", "beta"), v) for k, v in fields.items()},
                    coords={"alpha": alphas, "beta": betas}, attrs=attrs)
    write_netcdf(ds, out)
    print(f"{out}: {ds.ratio.shape} grid, {op.products} Hessian-vector products")
    return ds
