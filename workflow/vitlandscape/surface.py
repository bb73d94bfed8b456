"""Loss surfaces: evaluate grid tiles by moving weights in place, assemble tiles into Zarr.

Surface contract (`xarray.open_zarr(...)`): variable `loss(alpha, beta)` (+ `accuracy` for
classification objectives), `loss[i, j] = L(theta + alpha[i] * dx + beta[j] * dy)`,
chunks = tiles, provenance in the attributes.
"""
import shutil
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from vitlandscape import grid, progress

# Attributes every tile of one surface must agree on (checked at assembly).
PROVENANCE = ("model", "method", "objective", "checkpoint", "checkpoint_sha256", "directions_sha256",
              "grid", "eval_samples", "mask_seed", "mask_ratio", "config_hash")


class Perturbation:
    """Sets a model's weights to theta + a * dx + b * dy in place (no copy of the model).

    `directions` is {'x': {name: dx}, 'y': {name: dy}}; an empty 'y' perturbs along x only.
    """

    def __init__(self, model: torch.nn.Module, directions: dict):
        params = dict(model.named_parameters())
        unknown = sorted(set(directions["x"]) - set(params))
        if unknown:
            raise ValueError(f"directions name parameters the model does not have: {', '.join(unknown)}")
        self.entries = []
        for name, dx in directions["x"].items():
            p = params[name]
            if dx.shape != p.shape:
                raise ValueError(f"direction for {name} has shape {tuple(dx.shape)}, parameter {tuple(p.shape)}")
            dy = directions["y"].get(name)
            self.entries.append((p, p.detach().clone(), dx.to(p.device, p.dtype),
                                 None if dy is None else dy.to(p.device, p.dtype)))

    @torch.no_grad()
    def set(self, a: float, b: float = 0.0) -> None:
        for p, theta, dx, dy in self.entries:
            torch.add(theta, dx, alpha=a, out=p)
            if dy is not None:
                p.add_(dy, alpha=b)

    @torch.no_grad()
    def restore(self) -> None:
        for p, theta, _, _ in self.entries:
            p.copy_(theta)


def evaluate_points(objective, perturbation: Perturbation, points, desc: str = "points"):
    """Loss and accuracy at each (a, b) in `points`; NaN/inf are kept as they come."""
    losses, accs = np.empty(len(points)), np.empty(len(points))
    try:
        for k, (a, b) in enumerate(progress.bar(points, desc, unit="pt")):
            perturbation.set(a, b)
            losses[k], accs[k] = objective.evaluate()
    finally:
        perturbation.restore()
    return losses, accs


def evaluate_tile(objective, perturbation: Perturbation, alphas, betas):
    """-> (loss, accuracy), each [len(alphas), len(betas)]."""
    points = [(float(a), float(b)) for a in alphas for b in betas]
    losses, accs = evaluate_points(objective, perturbation, points, desc="tile")
    shape = (len(alphas), len(betas))
    return losses.reshape(shape), accs.reshape(shape)


def tile_dataset(loss, acc, alphas, betas, attrs: dict) -> xr.Dataset:
    data = {"loss": (("alpha", "beta"), loss)}
    if not np.all(np.isnan(acc)):
        data["accuracy"] = (("alpha", "beta"), acc)
    ds = xr.Dataset(data, coords={"alpha": np.asarray(alphas), "beta": np.asarray(betas)}, attrs=attrs)
    return describe(ds)


def describe(ds: xr.Dataset) -> xr.Dataset:
    """Units and long names for the variables and coordinates."""
    ds["alpha"].attrs.update(long_name="step along direction x", units="1 (direction scale)")
    ds["beta"].attrs.update(long_name="step along direction y", units="1 (direction scale)")
    ds["loss"].attrs.update(long_name=f"{ds.attrs['objective']} loss at theta + alpha dx + beta dy", units="1")
    if "accuracy" in ds:
        ds["accuracy"].attrs.update(long_name="top-1 accuracy on the evaluation set", units="1 (fraction)")
    return ds


def write_netcdf(ds: xr.Dataset, path) -> None:
    """Write a small result file atomically (tmp + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    ds.to_netcdf(tmp, engine="scipy")
    tmp.replace(path)


def assemble(tile_files, alpha_spec, beta_spec, tile, out, expected: dict) -> xr.Dataset:
    """Join tiles into one Zarr store chunked by tile.

    Every tile must carry the provenance in `expected` (checkpoint, directions, grid, ...)
    and the coordinates of its slot; otherwise the tile is named and nothing is written.
    """
    alphas, betas = grid.axis(alpha_spec), grid.axis(beta_spec)
    names = grid.tile_names(alpha_spec, beta_spec, tile)
    by_name = {Path(f).stem: f for f in tile_files}
    missing = sorted(set(names) - set(by_name))
    if missing:
        raise ValueError(f"tiles missing for {out}: {', '.join(missing)}")
    loss = np.full((len(alphas), len(betas)), np.nan)
    acc = np.full_like(loss, np.nan)
    attrs = None
    for name in names:
        with xr.open_dataset(by_name[name], engine="scipy") as ds:
            ds.load()
        for key, value in expected.items():
            if str(ds.attrs.get(key)) != str(value):
                raise ValueError(f"tile {by_name[name]} was computed with {key}={ds.attrs.get(key)!r}, "
                                 f"expected {value!r}: refusing to mix it into {out}")
        if attrs is not None:
            differing = [k for k in PROVENANCE if str(ds.attrs.get(k)) != str(attrs.get(k))]
            if differing:
                raise ValueError(f"tile {by_name[name]} differs from the other tiles in {', '.join(differing)}")
        attrs = dict(ds.attrs)
        sa, sb = grid.tile_slices(name, alpha_spec, beta_spec, tile)
        if not (np.array_equal(ds.alpha.values, alphas[sa]) and np.array_equal(ds.beta.values, betas[sb])):
            raise ValueError(f"tile {by_name[name]} has coordinates that do not match its slot in the grid")
        loss[sa, sb] = ds.loss.values
        if "accuracy" in ds:
            acc[sa, sb] = ds.accuracy.values
    attrs["tile"] = list(tile)
    surface = tile_dataset(loss, acc, alphas, betas, attrs)
    write_zarr(surface, out, chunks=tuple(tile))
    return surface


def write_zarr(ds: xr.Dataset, out, chunks) -> None:
    """Write to a temporary store beside `out`, then move it into place."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    encoding = {name: {"chunks": chunks} for name in ds.data_vars}
    ds.to_zarr(tmp, mode="w", encoding=encoding, consolidated=True, zarr_format=2)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
