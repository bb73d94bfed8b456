"""Figure stages: read surfaces from Zarr, draw them (figures.py) and export them (interactive.py)."""
import xarray as xr

from vitlandscape import figures, interactive


def open_surface(path) -> xr.Dataset:
    return xr.open_zarr(path).load()


def surface_figures(settings: dict, surface_path, prefix, html, vts) -> list:
    ds = open_surface(surface_path)
    written = (figures.plot_surface(ds, prefix, settings) + figures.plot_contour(ds, prefix, settings)
               + figures.plot_slices(ds, prefix, settings))
    written += [interactive.write_html(ds, html, settings), interactive.write_vts(ds, vts, settings)]
    for path in written:
        print(path)
    return written


def accuracy_figure(settings: dict, surface_path, prefix) -> list:
    ds = open_surface(surface_path)
    if "accuracy" not in ds:
        raise ValueError(f"surface {surface_path} has no accuracy (objective {ds.attrs.get('objective')})")
    written = figures.plot_accuracy(ds, prefix, settings)
    for path in written:
        print(path)
    return written


def path_figure(settings: dict, path_file, prefix) -> list:
    """Figure of a 1-D landscape (line or interpolation, netCDF)."""
    with xr.open_dataset(path_file, engine="scipy") as ds:
        ds.load()
    written = figures.plot_path(ds, prefix, settings)
    for path in written:
        print(path)
    return written


def comparison_figures(settings: dict, surface_paths, labels, prefix, title=None) -> list:
    if len(labels) != len(surface_paths):
        raise ValueError(f"{len(surface_paths)} surfaces but {len(labels)} labels")
    entries = [(label, open_surface(path)) for label, path in zip(labels, surface_paths)]
    written = figures.plot_comparison(entries, prefix, settings, title=title)
    written += figures.plot_basin_overlay(entries, prefix, settings)
    delta = figures.resolve_settings(settings)["basin_delta"]
    for label, ds in entries:
        print(f"{label}: basin area fraction (loss <= centre + {delta}) = "
              f"{figures.basin_area_fraction(ds, delta):.3f}")
    for path in written:
        print(path)
    return written
