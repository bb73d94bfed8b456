"""Interactive views of one surface: a self-contained plotly HTML page and a
ParaView-readable structured grid (.vts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pyvista as pv
import xarray as xr
from matplotlib import colormaps
from matplotlib.colors import to_hex

from vitlandscape.figures.surfaces import ALPHA_LABEL, BETA_LABEL, clip_values, describe, plot_grid, resolve_settings


def _json_values(values: np.ndarray) -> list:
    """Nested lists of floats with non-finite values as None (gaps in plotly)."""
    return np.where(np.isfinite(values), values.astype(object), None).tolist()


def _colorscale(cmap: str, n: int = 11) -> list[list]:
    """A matplotlib colormap as a plotly colorscale."""
    colours = colormaps[cmap]
    return [[float(t), to_hex(colours(t))] for t in np.linspace(0, 1, n)]


def _z_label(settings: dict) -> str:
    zmax = settings["zmax"]
    return "loss" if zmax is None else f"loss, clipped at {zmax:g}"


def make_plotly_figure(ds: xr.Dataset, settings: dict | None = None) -> go.Figure:
    """3-D surface (alpha on x, beta on y) whose hover shows alpha, beta, loss, accuracy."""
    s = resolve_settings(settings)
    _, _, loss = plot_grid(ds)
    layers, hover = [loss], ["alpha=%{x:.4g}", "beta=%{y:.4g}", "loss=%{customdata[0]:.4g}"]
    if "accuracy" in ds:
        layers.append(plot_grid(ds, "accuracy")[2])
        hover.append("accuracy=%{customdata[1]:.2%}")
    surface = go.Surface(
        x=ds["alpha"].values.tolist(),
        y=ds["beta"].values.tolist(),
        z=_json_values(clip_values(loss, s)),
        customdata=_json_values(np.stack(layers, axis=-1)),
        hovertemplate="<br>".join(hover) + "<extra></extra>",
        colorscale=_colorscale(s["cmap"]),
        colorbar={"title": {"text": _z_label(s)}},
    )
    d = describe(ds)
    title = f"{d['model']}: {d['loss']}<br><sup>{d['grid']} · {d['samples']} · {d['directions']}</sup>"
    fig = go.Figure(surface)
    fig.update_layout(
        title={"text": title},
        scene={"xaxis_title": ALPHA_LABEL, "yaxis_title": BETA_LABEL, "zaxis_title": _z_label(s)},
    )
    return fig


def write_html(ds: xr.Dataset, path: Path | str, settings: dict | None = None) -> Path:
    """One offline HTML page (plotly.js inlined, no external scripts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_plotly_figure(ds, settings).write_html(path, include_plotlyjs=True, full_html=True)
    return path


def make_structured_grid(ds: xr.Dataset, settings: dict | None = None) -> pv.StructuredGrid:
    """Points (alpha, beta, height) with height = loss clipped at zmax; where the loss is not
    finite the height is NaN and the point hidden (VTK blanking: ParaView leaves out the cells
    around it and keeps it out of the bounds). Point data ``loss`` (raw) and ``accuracy`` when
    present. Point k = i + len(alpha) * j."""
    s = resolve_settings(settings)
    alpha, beta = np.meshgrid(ds["alpha"].values, ds["beta"].values, indexing="ij")
    loss = ds["loss"].transpose("alpha", "beta").values.astype(float)
    height = clip_values(loss, s)
    grid = pv.StructuredGrid(alpha[..., None], beta[..., None], height[..., None])
    gaps = np.flatnonzero(np.isnan(height.ravel(order="F")))
    if gaps.size:
        grid.hide_points(gaps)
    grid.point_data["loss"] = loss.ravel(order="F")
    if "accuracy" in ds:
        grid.point_data["accuracy"] = ds["accuracy"].transpose("alpha", "beta").values.ravel(order="F")
    return grid


def write_vts(ds: xr.Dataset, path: Path | str, settings: dict | None = None) -> Path:
    """The surface as a VTK XML structured grid for ParaView."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_structured_grid(ds, settings).save(path)
    return path
