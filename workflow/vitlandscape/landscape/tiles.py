"""Surface files: one tile's dataset, and the assembly of a surface's tiles into one Zarr store
chunked by tile, refusing tiles of other provenance. Imports neither torch nor timm: the
assemble job reads and writes files only.

Surface contract (`xarray.open_zarr(...)`): variable `loss(alpha, beta)` (+ `accuracy` for
classification objectives), `loss[i, j] = L(theta + alpha[i] * dx + beta[j] * dy)`,
chunks = tiles, provenance in the attributes.

Non-finite losses (a far point where the model diverges) are stored as computed, never
replaced. Every tile, surface and 1-D path counts them in its attributes (`nonfinite_counts`):
`nonfinite_points` = `nan_points` + `inf_points` (either sign), and its job log gets one
warning line (`warn_nonfinite`); figures draw them as gaps and metrics leave them out.
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import xarray as xr

from vitlandscape import faults
from vitlandscape.landscape import grid
from vitlandscape.storage.outputs import replacing, sha256

# Attributes every tile of one surface must agree on (checked at assembly).
PROVENANCE = ("model", "method", "objective", "checkpoint", "checkpoint_sha256", "directions_sha256",
              "grid", "eval_samples", "mask_seed", "mask_ratio", "config_hash")

# Settings that change how a surface is computed, not what it is.
_RUNTIME_KEYS = ("batch_size", "device")


def config_hash(settings: dict) -> str:
    landscape = {k: v for k, v in settings["landscape"].items() if k not in _RUNTIME_KEYS}
    content = json.dumps({**settings, "landscape": landscape}, sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def nonfinite_counts(loss) -> dict:
    """Attributes counting the losses that are NaN or infinite."""
    loss = np.asarray(loss)
    nan, inf = int(np.isnan(loss).sum()), int(np.isinf(loss).sum())
    return {"nonfinite_points": nan + inf, "nan_points": nan, "inf_points": inf}


def warn_nonfinite(ds: xr.Dataset, label: str) -> None:
    """One warning line in the job log when some of `ds`'s losses are not finite."""
    if ds.attrs["nonfinite_points"]:
        points = "grid points" if ds.loss.ndim == 2 else "points"
        print(f"WARNING: {label}: {ds.attrs['nonfinite_points']} of {ds.loss.size} {points} have a non-finite "
              f"loss ({ds.attrs['inf_points']} inf, {ds.attrs['nan_points']} NaN); figures and metrics leave them out")


def finite_range(loss) -> str:
    """'min .. max' of the finite losses, for a log line."""
    finite = np.asarray(loss)[np.isfinite(loss)]
    return f"{finite.min():.4f} .. {finite.max():.4f}" if finite.size else "none finite"


def tile_dataset(loss, acc, alphas, betas, attrs: dict) -> xr.Dataset:
    data = {"loss": (("alpha", "beta"), loss)}
    if not np.all(np.isnan(acc)):
        data["accuracy"] = (("alpha", "beta"), acc)
    ds = xr.Dataset(data, coords={"alpha": np.asarray(alphas), "beta": np.asarray(betas)},
                    attrs={**attrs, **nonfinite_counts(loss)})
    return describe(ds)


def describe(ds: xr.Dataset) -> xr.Dataset:
    """Units and long names for the variables and coordinates."""
    ds["alpha"].attrs.update(long_name="step along direction x", units="1 (direction scale)")
    ds["beta"].attrs.update(long_name="step along direction y", units="1 (direction scale)")
    ds["loss"].attrs.update(long_name=f"{ds.attrs['objective']} loss at theta + alpha dx + beta dy", units="1")
    if "accuracy" in ds:
        ds["accuracy"].attrs.update(long_name="top-1 accuracy on the evaluation set", units="1 (fraction)")
    return ds


def join(tile_files, alpha_spec, beta_spec, tile, out, expected: dict) -> xr.Dataset:
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
        try:
            with xr.open_dataset(by_name[name], engine="scipy") as ds:
                ds.load()
        except Exception as err:  # scipy raises TypeError / ValueError / OSError for a cut or foreign file
            raise ValueError(f"tile {by_name[name]} cannot be read (truncated or not a NetCDF file): "
                             f"{type(err).__name__}: {err}; remove it and rerun its surface_tile job") from err
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
    """Write to a temporary store beside `out`, then move it into place; a failed write
    (a full disk) removes the temporary and leaves a previous `out` as it was."""
    encoding = {name: {"chunks": chunks} for name in ds.data_vars}
    with replacing(out, directory=True) as tmp:
        ds.to_zarr(tmp, mode="w", encoding=encoding, consolidated=True, zarr_format=2)
        faults.sigkill_at("assemble:write_zarr")  # test hook: inert when unset


def assemble(settings: dict, tile_files, checkpoint, directions_path, out) -> xr.Dataset:
    axes = [settings["landscape"][k] for k in ("alpha", "beta", "tile")]
    expected = {"checkpoint_sha256": sha256(checkpoint),
                "directions_sha256": sha256(directions_path),
                "grid": grid.signature(*axes),
                "config_hash": config_hash(settings)}
    ds = join(tile_files, *axes, out, expected)
    centre = ds.loss.sel(alpha=0, beta=0, method="nearest").item()
    print(f"{out}: {ds.loss.shape} grid, centre loss {centre:.4f}, range {finite_range(ds.loss.values)}")
    warn_nonfinite(ds, f"{ds.attrs['model']}/{ds.attrs['objective']}")
    return ds
