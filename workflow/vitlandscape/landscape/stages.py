"""Landscape stages: directions, grid tiles, assembly, 1-D lines and interpolations.

Each takes `settings`: the model's config entry plus `name`, `objective` and the
`landscape` section, exactly as the rules pass them.
"""
import json

import numpy as np
import timm
import torch
import xarray as xr

import vitlandscape
from vitlandscape import faults
from vitlandscape.landscape import directions, grid, objectives, surface, tiles
from vitlandscape.landscape.settings import LandscapeSettings
from vitlandscape.storage import outputs
from vitlandscape.storage.outputs import sha256, write_json, write_netcdf


def versions() -> str:
    return f"vitlandscape {vitlandscape.__version__}, torch {torch.__version__}, timm {timm.__version__}"


def make_directions(settings: dict, checkpoint, out) -> dict:
    landscape = LandscapeSettings.of(settings)
    model, ckpt = objectives.load(settings["objective"], checkpoint, settings)
    print(f"checkpoint {checkpoint}: {ckpt.label}")
    dirs = directions.make(model, landscape.direction_seed, landscape.normalization, landscape.perturb_1d,
                           landscape.perturb_frozen, landscape.orthogonal)
    metadata = {"model": settings["name"], "objective": settings["objective"],
                "checkpoint_sha256": sha256(checkpoint), "seed": landscape.direction_seed,
                "normalization": landscape.normalization, "perturb_1d": landscape.perturb_1d,
                "perturb_frozen": landscape.perturb_frozen, "orthogonal": landscape.orthogonal}
    directions.save(dirs, out, metadata)
    print(f"{len(dirs) // 2} perturbed tensors, "
          f"{sum(v.numel() for k, v in dirs.items() if k.startswith('x.'))} weights -> {out}")
    return dirs


def trajectory_plane(settings: dict, checkpoint, snapshots_path, out, summary_out) -> dict:
    """The PCA plane of a recorded training path around the weights it ended at (`checkpoint`,
    the landscape's centre): directions in the direction-file contract, over the parameters a
    random direction would perturb, and the path's coordinates and distances (`summary_out`)."""
    from vitlandscape.landscape import trajectory_plane as trajectory_pca  # beside the stage trajectory_plane
    from vitlandscape.storage import snapshots
    landscape = LandscapeSettings.of(settings)
    model, ckpt = objectives.load(settings["objective"], checkpoint, settings)
    print(f"checkpoint {checkpoint}: {ckpt.label}")
    names = directions.perturbed_names(model, landscape.perturb_1d, landscape.perturb_frozen)
    steps, states, meta = snapshots.load_snapshots(snapshots_path)
    checkpoint_sha = outputs.made_for(checkpoint, meta, f"snapshots {snapshots_path} were recorded")
    final = {name: p.detach().float().cpu() for name, p in model.named_parameters()}
    how = settings["trajectories"]["normalization"]
    plane = trajectory_pca.pca_plane(states, final, names, how)
    summary = {"model": settings["name"], "objective": settings["objective"], "stage": meta.get("stage"),
               **trajectory_pca.summary(steps, plane, trajectory_pca.path_distances(states, final, names))}
    metadata = {"model": settings["name"], "objective": settings["objective"],
                "checkpoint_sha256": checkpoint_sha, "snapshots_sha256": sha256(snapshots_path),
                "normalization": f"pca-{how}",
                "explained_variance_ratio": json.dumps(summary["explained_variance_ratio"]),
                "perturb_1d": landscape.perturb_1d, "perturb_frozen": landscape.perturb_frozen}
    directions.save(plane["directions"], out, metadata)
    write_json(summary, summary_out)
    ratio = summary["explained_variance_ratio"]
    print(f"{len(steps)} snapshots, {len(names)} tensors: PC1 {ratio[0]:.1%}, PC2 {ratio[1]:.1%} of the variance "
          f"-> {out}, {summary_out}")
    return summary


def _setup(settings: dict, data_path, checkpoint, directions_path):
    """Objective, in-place perturbation and provenance attributes for one surface."""
    landscape = LandscapeSettings.of(settings)
    objective = objectives.for_stage(settings, data_path, checkpoint, landscape)
    dirs, meta = directions.load(directions_path)
    outputs.made_for(checkpoint, meta, f"directions {directions_path} were made")
    perturbation = surface.Perturbation(objective.model, dirs)
    pretext = settings["objective"] == "pretext"
    attrs = {**objectives.provenance(settings, checkpoint, objective),
             "directions_sha256": sha256(directions_path),
             "grid": grid.signature(landscape.alpha, landscape.beta, landscape.tile),
             "mask_seed": landscape.mask_seed if pretext else "n/a",
             "mask_ratio": settings["mask_ratio"] if pretext else "n/a",
             "config_hash": tiles.config_hash(settings), "versions": versions(),
             "normalization": landscape.normalization, "perturb_1d": int(landscape.perturb_1d),
             "perturb_frozen": int(landscape.perturb_frozen), "orthogonal": int(landscape.orthogonal),
             "direction_seed": landscape.direction_seed, "perturbed_tensors": len(dirs["x"]),
             "precision": landscape.precision}
    if settings["objective"] == "contrastive":  # what fixes its views and negatives
        attrs.update(view_seed=landscape.view_seed, contrastive_batch_size=landscape.batch_size)
    return objective, perturbation, attrs


def surface_tile(settings: dict, data_path, checkpoint, directions_path, tile: str, out) -> xr.Dataset:
    landscape = LandscapeSettings.of(settings)
    objective, perturbation, attrs = _setup(settings, data_path, checkpoint, directions_path)
    sa, sb = grid.tile_slices(tile, landscape.alpha, landscape.beta, landscape.tile)
    alphas, betas = grid.axis(landscape.alpha)[sa], grid.axis(landscape.beta)[sb]
    key = f"{settings['name']}.{settings['objective']}.{tile}"
    faults.sigkill_midway(objective, f"tile:{key}", len(alphas) * len(betas))  # test hooks: inert when unset
    loss, acc = surface.evaluate_tile(objective, perturbation, alphas, betas)
    faults.fail_once(key, f"tile {key}")
    ds = tiles.tile_dataset(loss, acc, alphas, betas, {**attrs, "tile_name": tile})
    write_netcdf(ds, out)
    print(f"tile {tile}: {loss.size} points, loss {tiles.finite_range(loss)} -> {out}")
    tiles.warn_nonfinite(ds, f"{settings['name']}/{settings['objective']} tile {tile}")
    return ds


def line(settings: dict, data_path, checkpoint, directions_path, out) -> xr.Dataset:
    """The 1-D landscape L(theta + t * dx) for t on `landscape.line`."""
    objective, perturbation, attrs = _setup(settings, data_path, checkpoint, directions_path)
    line_axis = LandscapeSettings.of(settings).line
    ts = grid.axis(line_axis)
    losses, accs = surface.evaluate_points(objective, perturbation, [(float(t), 0.0) for t in ts], desc="line")
    if settings["objective"] == "pretext":
        # the line usually passes through the trained weights: reuse that point
        centre = float(losses[ts == 0][0]) if (ts == 0).any() else objective.evaluate()[0]
        attrs.update(pretext_sanity(centre, objective, settings))
    return _write_path(losses, accs, ts, "alpha", {**attrs, "grid": f"line={line_axis}"}, out)


# A trained MAE reconstructs far better than predicting zeros; at or above this share of the
# zero-prediction loss the decoder is not doing its job on these targets.
SUSPICIOUS_PRETEXT = 0.8


def pretext_sanity(centre: float, objective, settings: dict) -> dict:
    """The pretext loss at the trained weights (`centre`) against the zero-prediction loss;
    warns (in the job log) when the model reconstructs no better than zeros: most often a
    `norm_pix_loss` that does not match the checkpoint's training."""
    zero = objective.zero_prediction_loss()
    print(f"pretext loss at the centre {centre:.4f}; predicting zeros gives {zero:.4f}")
    if centre >= SUSPICIOUS_PRETEXT * zero:
        print(f"WARNING: models.{settings['name']}: the pretext loss of the trained model ({centre:.4f}) is "
              f"{centre / zero:.0%} of the loss of predicting zeros ({zero:.4f}). Does norm_pix_loss "
              f"({settings['norm_pix_loss']}) match how the checkpoint was trained?")
    return {"centre_loss": centre, "zero_prediction_loss": zero}


def interpolate(settings: dict, data_path, start, end, out) -> xr.Dataset:
    """L((1 - t) theta_start + t theta_end) for t on the interpolation's `range`.

    `start` / `end` are checkpoint files of the same architecture; weights are moved in place
    along `theta_end - theta_start` (every parameter, buffers taken from `start`).
    """
    landscape = LandscapeSettings.of(settings)
    objective = objectives.for_stage(settings, data_path, start, landscape)
    end_settings = {**settings, "trust_checkpoint": settings.get("end_trust_checkpoint", False)}
    end_model = objectives.load_model(settings["objective"], end, end_settings)  # same arch: strict keys
    theta0 = dict(objective.model.named_parameters())
    delta = {name: p.detach().cpu() - theta0[name].detach().cpu() for name, p in end_model.named_parameters()}
    perturbation = surface.Perturbation(objective.model, {"x": delta, "y": {}})
    ts = grid.axis(settings["range"])
    losses, accs = surface.evaluate_points(objective, perturbation, [(float(t), 0.0) for t in ts],
                                           desc="interpolation")
    attrs = {"name": settings["interpolation"], "objective": settings["objective"],
             "start_model": settings["name"], "end_model": settings["end_model"], "start": str(start),
             "end": str(end), "start_sha256": sha256(start), "end_sha256": sha256(end),
             "eval_samples": objective.info["eval_samples"], "precision": landscape.precision, "versions": versions()}
    return _write_path(losses, accs, ts, "t", attrs, out)


def _write_path(losses, accs, coords, dim: str, attrs: dict, out) -> xr.Dataset:
    data_vars = {"loss": ((dim,), losses)}
    if not np.all(np.isnan(accs)):
        data_vars["accuracy"] = ((dim,), accs)
    ds = xr.Dataset(data_vars, coords={dim: coords}, attrs={**attrs, **tiles.nonfinite_counts(losses)})
    write_netcdf(ds, out)
    print(f"{out}: {len(coords)} points, loss {tiles.finite_range(losses)}")
    tiles.warn_nonfinite(ds, str(out))
    return ds
