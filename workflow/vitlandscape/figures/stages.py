"""Figure stages: read surfaces from Zarr, draw them (surfaces.py, trajectories.py) and export them
(interactive.py); draw Hessian spectra from their metrics JSON."""
import json
from pathlib import Path

import xarray as xr

from vitlandscape.figures import interactive
from vitlandscape.figures import surfaces as figures_surfaces


def open_surface(path) -> xr.Dataset:
    return xr.open_zarr(path).load()


def open_netcdf(path) -> xr.Dataset:
    """A small result file (line, interpolation, ratio map), read whole."""
    with xr.open_dataset(path, engine="scipy") as ds:
        return ds.load()


def printed(written: list) -> list:
    """The files a figure stage wrote, listed in its log."""
    for path in written:
        print(path)
    return written


def surface_figures(settings: dict, surface_path, prefix, html, vts) -> list:
    ds = open_surface(surface_path)
    written = (figures_surfaces.plot_surface(ds, prefix, settings) + figures_surfaces.plot_contour(ds, prefix, settings)
               + figures_surfaces.plot_slices(ds, prefix, settings))
    written += [interactive.write_html(ds, html, settings), interactive.write_vts(ds, vts, settings)]
    return printed(written)


def accuracy_figure(settings: dict, surface_path, prefix) -> list:
    ds = open_surface(surface_path)
    if "accuracy" not in ds:
        raise ValueError(f"surface {surface_path} has no accuracy (objective {ds.attrs.get('objective')})")
    return printed(figures_surfaces.plot_accuracy(ds, prefix, settings))


def path_figure(settings: dict, path_file, prefix) -> list:
    """Figure of a 1-D landscape (line or interpolation, netCDF)."""
    return printed(figures_surfaces.plot_path(open_netcdf(path_file), prefix, settings))


def comparison_figures(settings: dict, surface_paths, labels, prefix, title=None) -> list:
    if len(labels) != len(surface_paths):
        raise ValueError(f"{len(surface_paths)} surfaces but {len(labels)} labels")
    entries = [(label, open_surface(path)) for label, path in zip(labels, surface_paths)]
    written = figures_surfaces.plot_comparison(entries, prefix, settings, title=title)
    written += figures_surfaces.plot_basin_overlay(entries, prefix, settings)
    delta = figures_surfaces.resolve_settings(settings)["basin_delta"]
    for label, ds in entries:
        print(f"{label}: share of the grid with loss <= centre + {delta} = "
              f"{figures_surfaces.share_below_level(ds, delta):.3f}")
    return printed(written)


def spectrum_figure(settings: dict, hessian_files, labels, prefix) -> list:
    """Hessian eigenvalue densities, one panel per `hessian.json` of the metrics stage."""
    if len(labels) != len(hessian_files):
        raise ValueError(f"{len(hessian_files)} Hessian files but {len(labels)} labels")
    entries = [(label, json.loads(Path(path).read_text())) for label, path in zip(labels, hessian_files)]
    return printed(figures_surfaces.plot_spectrum(entries, prefix, settings))


def ratio_map_figure(settings: dict, ratio_map_file, prefix) -> list:
    """Map of |lambda_min / lambda_max| (netCDF of the ratio-map stage)."""
    return printed(figures_surfaces.plot_ratio_map(open_netcdf(ratio_map_file), prefix, settings))


def trajectory_figures(settings: dict, surface_paths, summary_files, curve_files, labels, prefix, title=None) -> list:
    """`{prefix}_path` (the path on its PCA-plane landscape; side by side for several models),
    `{prefix}_curves` (loss per step) and `{prefix}_distances` (travelled and left to the end)."""
    import pandas as pd

    from vitlandscape.figures import trajectories
    from vitlandscape.metrics.curves import compared_column
    if not len(labels) == len(surface_paths) == len(summary_files) == len(curve_files):
        raise ValueError(f"{len(labels)} labels for {len(surface_paths)} surfaces, {len(summary_files)} "
                         f"summaries and {len(curve_files)} curves")
    surfaces = [open_surface(path) for path in surface_paths]
    summaries = {label: json.loads(Path(path).read_text()) for label, path in zip(labels, summary_files)}
    curves = {label: pd.read_csv(path) for label, path in zip(labels, curve_files)}
    if len(labels) == 1:
        path_fig = trajectories.trajectory_figure(surfaces[0], summaries[labels[0]], title, settings)
    else:
        items = [(label, ds, summaries[label]) for label, ds in zip(labels, surfaces)]
        path_fig = trajectories.trajectory_comparison_figure(items, title, settings)
    column = compared_column(curves.values())
    written = figures_surfaces.save_figure(path_fig, prefix, "path", settings)
    written += figures_surfaces.save_figure(trajectories.loss_curves_figure(curves, column, title, settings), prefix,
                                            "curves", settings)
    written += figures_surfaces.save_figure(trajectories.distance_figure(summaries, title, settings), prefix,
                                            "distances", settings)
    return printed(written)
