"""The metrics of every surface in one place: the measures of its 2-D surface, joined with
its Hessian and flatness files, as `results/metrics/{model}/{objective}.json`, then the
summary table and the findings table (findings.py). Imports neither torch nor timm.
"""
import json
from pathlib import Path

import numpy as np
import xarray as xr

from vitlandscape.metrics import basins, findings
from vitlandscape.storage.outputs import write_json

# Fields of the Hessian and flatness files that say which model they measure, not what.
IDENTITY = ("model", "method", "objective", "checkpoint", "checkpoint_sha256", "checkpoint_format", "eval_samples")


def surface_measures(ds: xr.Dataset, cfg: dict) -> dict:
    """Basins (relative and absolute levels), convex region and sharpness of one surface;
    `cfg` is the config's `metrics` section. `nonfinite_points` counts the grid points whose
    loss is not finite, which every measure leaves out (basins.py)."""
    loss, alpha, beta = ds.loss.values, ds.alpha.values, ds.beta.values
    return {"centre_loss": basins.centre_loss(loss, alpha, beta),
            "nonfinite_points": int((~np.isfinite(loss)).sum()),
            "relative_basins": basins.relative_basins(loss, alpha, beta, cfg["relative_rises"]),
            "absolute_basins": basins.absolute_basins(loss, alpha, beta, cfg["absolute_rises"]),
            "convex_region": basins.convex_region(loss, alpha, beta),
            "sharpness": [basins.sharpness(loss, alpha, beta, rho) for rho in cfg["sharpness_rho"]]}


def _measures(ds: xr.Dataset, cfg: dict, surface_path) -> dict:
    try:
        return surface_measures(ds, cfg)
    except ValueError as e:  # a centre without a finite loss, a circle off the grid: name the surface
        raise ValueError(f"surface {surface_path} ({ds.attrs['model']}/{ds.attrs['objective']}): {e}") from e


def _read(path) -> dict | None:
    return json.loads(Path(path).read_text()) if path else None


def _without(found: dict | None, keys) -> dict | None:
    """A measured part without the fields the metrics file holds once, at its top level."""
    return None if found is None else {k: v for k, v in found.items() if k not in keys}


def surface_metrics(surface_path, hessian_path, flatness_path, cfg: dict) -> dict:
    """One surface's metrics file: identity, the measured parts, and `centre_loss`, the loss
    at the trained weights (from the model where measured, else the surface's centre)."""
    ds = xr.open_zarr(surface_path).load()
    measured = {"hessian": _read(hessian_path), "flatness": _read(flatness_path)}
    for part, found in measured.items():
        # a study's variant on other directions has the Hessian of the training it shares: same weights
        same = (found or {}).get("checkpoint_sha256") == ds.attrs.get("checkpoint_sha256")
        if found and (found["objective"] != ds.attrs["objective"] or not same):
            raise ValueError(f"{part} file of {found['model']}/{found['objective']} given for surface "
                             f"{surface_path} of {ds.attrs['model']}/{ds.attrs['objective']}"
                             + ("" if found["objective"] != ds.attrs["objective"] else " (other weights)"))
    source = measured["hessian"] or measured["flatness"] or {}
    identity = {k: source.get(k, ds.attrs.get(k)) for k in IDENTITY} | {"model": ds.attrs["model"]}
    result = {**identity, "surface_file": str(surface_path),
              "parameters": (measured["hessian"] or {}).get("parameters"),
              "hessian": _without(measured["hessian"], IDENTITY + ("centre_loss",)),
              "flatness": _without(measured["flatness"], IDENTITY),  # its centre_loss scales its rises
              "surface": _measures(ds, cfg, surface_path)}
    result["centre_loss"] = source.get("centre_loss", result["surface"]["centre_loss"])
    return result


def write_surface_metrics(cfg: dict, surface, hessian, flatness, out) -> dict:
    """One surface's metrics file on its own (a study's variant; the run's own come with `tables`)."""
    metrics = surface_metrics(surface, hessian, flatness, cfg)
    write_json(metrics, out)
    return metrics


def tables(cfg: dict, surfaces, hessians, flatnesses, out_dir) -> None:
    """Write every surface's metrics file, `summary.csv` and `findings.csv` under `out_dir`.
    `hessians` / `flatnesses`: files in the order of `surfaces`, or empty when not measured."""
    for name, files in (("hessian", hessians), ("flatness", flatnesses)):
        if files and len(files) != len(surfaces):
            raise ValueError(f"{len(surfaces)} surfaces but {len(files)} {name} files")
    out_dir = Path(out_dir)
    written = []
    for k, path in enumerate(surfaces):
        m = surface_metrics(path, hessians[k] if hessians else None, flatnesses[k] if flatnesses else None, cfg)
        target = out_dir / m["model"] / f"{m['objective']}.json"
        write_json(m, target)
        written.append(target)
    summary = findings.summary_table(written, out_dir / "summary.csv")
    findings.findings_table(summary, cfg["claims"], out_dir / "findings.csv")
