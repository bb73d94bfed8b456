"""Static figures of loss surfaces: 3-D view, contours, 1-D slices, side-by-side
comparisons and basin overlays; and Hessian eigenvalue spectra (matplotlib, headless,
no pyplot state).

Every ``plot_*`` function builds its figure with the matching ``make_*_figure``
and writes ``{prefix}_{kind}.{fmt}`` for each format in ``settings["formats"]``.
Surfaces follow the dataset contract ``loss[i, j] = L(theta + alpha[i] dx + beta[j] dy)``;
alpha is drawn on the x axis and beta on the y axis.
"""

from __future__ import annotations

import itertools
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter, MaxNLocator

from vitlandscape import methods, paths
from vitlandscape.metrics import basins

# Keys of the config's `figures` section that are not drawing settings.
NOT_DRAWING = ("compare", "reconstructions")


def schema_defaults() -> dict:
    """The drawing settings' defaults as config/schema.yaml fills them in (zmax, log_scale,
    levels, elev, azim, cmap, dpi, basin_delta, formats): one place for them."""
    schema = yaml.load(paths.SCHEMA.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    section = schema["properties"]["figures"]["properties"]
    return {key: spec["default"] for key, spec in section.items() if key not in NOT_DRAWING}


DEFAULTS = schema_defaults()

ALPHA_LABEL = "alpha (direction x)"
BETA_LABEL = "beta (direction y)"
NORMALIZATION_LABELS = {"filter": "filter-norm", "layer": "layer-norm", "none": "unnormalised"}
LINESTYLES = ["-", "--", "-.", ":"]


def resolve_settings(settings: dict | None) -> dict:
    """DEFAULTS overridden by the matching keys of ``settings`` (the config's ``figures``
    section; its other keys, such as ``compare``, are not drawing settings)."""
    settings = settings or {}
    return {key: settings.get(key, default) for key, default in DEFAULTS.items()}


# --- labels -----------------------------------------------------------------


def _attr(ds: xr.Dataset, key: str) -> str:
    value = ds.attrs.get(key)
    return "?" if value is None or str(value) == "" else str(value)


def _flag(ds: xr.Dataset, key: str) -> bool | None:
    value = ds.attrs.get(key)
    if value is None:
        return None
    return str(value).strip().lower() in {"1", "true", "yes"}


def directions_label(ds: xr.Dataset) -> str:
    """E.g. 'filter-norm, weights only' or 'filter-norm, weights +1-D +frozen'."""
    norm = _attr(ds, "normalization")
    extras = []
    for key, name in (("perturb_1d", "+1-D"), ("perturb_frozen", "+frozen")):
        flag = _flag(ds, key)
        if flag is None:
            extras.append(name + "?")
        elif flag:
            extras.append(name)
    perturbed = "weights " + " ".join(extras) if extras else "weights only"
    return f"{NORMALIZATION_LABELS.get(norm, norm + '-norm')}, {perturbed}"


def grid_label(ds: xr.Dataset) -> str:
    """E.g. '9×7 grid, α∈[-1, 1], β∈[-0.5, 1]'."""
    alpha, beta = ds["alpha"].values, ds["beta"].values
    return (
        f"{alpha.size}×{beta.size} grid, α∈[{alpha.min():g}, {alpha.max():g}], "
        f"β∈[{beta.min():g}, {beta.max():g}]"
    )


def describe(ds: xr.Dataset) -> dict[str, str]:
    """Short labels of what a surface shows, keyed by aspect."""
    return {
        "model": _attr(ds, "model"),
        "loss": f"{_attr(ds, 'method')} {_attr(ds, 'objective')} loss",
        "grid": grid_label(ds),
        "samples": f"{_attr(ds, 'eval_samples')} eval samples",
        "directions": directions_label(ds),
    }


def _wrap(parts: list[str], width_in: float, fontsize: float) -> str:
    """Join ``parts`` with ' · ', breaking lines between parts to fit ``width_in`` inches."""
    chars = max(20, int(width_in * 72 / (0.6 * fontsize)))
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + 3 + len(part) <= chars:
            lines[-1] += " · " + part
        else:
            lines += textwrap.wrap(part, chars, break_on_hyphens=False)
    return "\n".join(lines)


def _suptitle(fig: Figure, title: str, details: list[str]) -> None:
    """A short title line, then the details wrapped to the figure width."""
    width = fig.get_size_inches()[0]
    fig.suptitle("\n".join([title, _wrap(details, width, 9)]).strip(), fontsize=9)


def _single_title(fig: Figure, ds: xr.Dataset) -> None:
    d = describe(ds)
    _suptitle(fig, f"{d['model']}: {d['loss']}", [d["grid"], d["samples"], d["directions"]])


# --- data preparation ---------------------------------------------------------


def plot_grid(ds: xr.Dataset, var: str = "loss") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X, Y, Z for matplotlib: X = alpha, Y = beta, ``Z[j, i] = ds[var][i, j]``."""
    X, Y = np.meshgrid(ds["alpha"].values, ds["beta"].values)
    Z = ds[var].transpose("alpha", "beta").values.astype(float).T
    return X, Y, Z


def clip_values(values: np.ndarray, settings: dict) -> np.ndarray:
    """Non-finite values become NaN (gaps); values above zmax are clipped to it."""
    values = np.where(np.isfinite(values), values, np.nan)
    if settings["zmax"] is not None:
        values = np.minimum(values, settings["zmax"])
    return values


def display_values(values: np.ndarray, settings: dict) -> np.ndarray:
    """What is drawn: clipped values, as log10 when ``log_scale`` (non-positive -> NaN)."""
    values = clip_values(values, settings)
    if settings["log_scale"]:
        values = np.log10(np.where(values > 0, values, np.nan))
    return values


def accuracy_percent(accuracy: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Accuracy in percent where the loss is finite, NaN (a gap) elsewhere: a non-finite loss
    comes from non-finite or overflowing outputs, whose top-1 is not to be trusted."""
    return np.where(np.isfinite(loss) & np.isfinite(accuracy), 100 * accuracy, np.nan)


def value_label(settings: dict) -> str:
    label = "log10(loss)" if settings["log_scale"] else "loss"
    if settings["zmax"] is not None:
        label += f", clipped at {settings['zmax']:g}"
    return label


def centre_index(ds: xr.Dataset) -> tuple[int, int]:
    """Indices (i, j) of the grid point nearest alpha = 0, beta = 0, as the metrics take it."""
    return basins.centre_index(ds["alpha"].values, ds["beta"].values)


def centre_loss(ds: xr.Dataset) -> float:
    """Loss at the grid point nearest the trained weights (an error naming the model if not finite)."""
    try:
        return basins.centre_loss(ds["loss"].transpose("alpha", "beta").values, ds["alpha"].values, ds["beta"].values)
    except ValueError as err:
        raise ValueError(f"surface of {_attr(ds, 'model')}: {err}") from None


def share_below_level(ds: xr.Dataset, delta: float) -> float:
    """Share of all grid points with loss <= centre loss + delta (non-finite: outside), connected to
    the centre or not: what the basin overlay's legend reports. metrics/basins.py's `basin` is the
    connected region around the centre only."""
    loss = ds["loss"].values
    inside = np.isfinite(loss) & (loss <= centre_loss(ds) + delta)
    return float(inside.mean())


@dataclass(frozen=True)
class ColourScale:
    """Contour levels and colour norm shared by every panel of a figure."""

    levels: np.ndarray
    norm: Normalize

    @property
    def limits(self) -> tuple[float, float]:
        return float(self.levels[0]), float(self.levels[-1])


def _finite_range(displayed: list[np.ndarray]) -> tuple[float, float]:
    finite = np.concatenate([v[np.isfinite(v)] for v in displayed])
    if finite.size == 0:
        raise ValueError("no finite values to plot")
    lo, hi = float(finite.min()), float(finite.max())
    return lo, hi if hi > lo else lo + max(abs(lo), 1.0) * 1e-6


def colour_scale(displayed: list[np.ndarray], settings: dict) -> ColourScale:
    """Levels log-spaced between the min and max of all finite displayed values.

    With ``log_scale`` the values already are log10(loss), so evenly spaced levels
    are log-spaced in loss; otherwise geometric spacing (linear if any value <= 0).
    """
    lo, hi = _finite_range(displayed)
    n = settings["levels"]
    if not settings["log_scale"] and lo > 0:
        return ColourScale(np.geomspace(lo, hi, n), LogNorm(lo, hi))
    return ColourScale(np.linspace(lo, hi, n), Normalize(lo, hi))


def _equal_ranges(ds: xr.Dataset) -> bool:
    alpha, beta = ds["alpha"].values, ds["beta"].values
    return bool(np.isclose(np.ptp(alpha), np.ptp(beta)))


# --- drawing on axes ------------------------------------------------------------


def _new_figure(size: tuple[float, float], settings: dict) -> Figure:
    fig = Figure(figsize=size, dpi=settings["dpi"], layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colorbar(fig: Figure, mappable, axes, scale: ColourScale, label: str, pad: float = 0.05):
    """Colorbar with about six of the contour levels as ticks."""
    ticks = np.unique(scale.levels[np.linspace(0, scale.levels.size - 1, 6).round().astype(int)])
    bar = fig.colorbar(mappable, ax=axes, shrink=0.7, pad=pad, ticks=ticks, format="%.3g", label=label)
    bar.minorticks_off()
    return bar


def _draw_surface(ax, X, Y, Zd, scale: ColourScale, settings: dict):
    surface = ax.plot_surface(
        X, Y, Zd, cmap=settings["cmap"], norm=scale.norm,
        rstride=1, cstride=1, linewidth=0, antialiased=False,
    )
    ax.set_zlim(*scale.limits)
    ax.view_init(elev=settings["elev"], azim=settings["azim"])
    ax.set_xlabel("alpha")
    ax.set_ylabel("beta")
    ax.set_zlabel(value_label(settings))
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.get_major_locator().set_params(nbins=4)
    ax.tick_params(labelsize=7, pad=1)
    return surface


def _mark_centre(ax, ds: xr.Dataset) -> None:
    i, j = centre_index(ds)
    ax.plot(ds["alpha"].values[i], ds["beta"].values[j], marker="*", markersize=9,
            color="red", markeredgecolor="white", linestyle="none")


def _draw_contour(ax, ds: xr.Dataset, X, Y, Zd, scale: ColourScale, settings: dict):
    masked = np.ma.masked_invalid(Zd)
    filled = ax.contourf(X, Y, masked, levels=scale.levels, cmap=settings["cmap"], norm=scale.norm)
    lines = ax.contour(X, Y, masked, levels=scale.levels, colors="black", linewidths=0.4, alpha=0.6)
    ax.clabel(lines, lines.levels[::2], fontsize=6, fmt="%.3g")
    _mark_centre(ax, ds)
    _grid_axes(ax, ds)
    return filled


def _grid_axes(ax, ds: xr.Dataset) -> None:
    """Axis labels, at most 5 ticks per axis, equal aspect when the ranges match."""
    ax.set_xlabel(ALPHA_LABEL)
    ax.set_ylabel(BETA_LABEL)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_locator(MaxNLocator(5))
    if _equal_ranges(ds):
        ax.set_aspect("equal")


# --- figures -------------------------------------------------------------------------


def _single_loss_figure(ds: xr.Dataset, settings: dict | None, three_d: bool) -> Figure:
    """One panel of the loss (3-D surface or contours) with a colorbar and the title."""
    s = resolve_settings(settings)
    X, Y, Z = plot_grid(ds)
    Zd = display_values(Z, s)
    scale = colour_scale([Zd], s)
    fig = _new_figure((6.4, 5.2), s)
    if three_d:
        ax = fig.add_subplot(projection="3d")
        mappable = _draw_surface(ax, X, Y, Zd, scale, s)
    else:
        ax = fig.add_subplot()
        mappable = _draw_contour(ax, ds, X, Y, Zd, scale, s)
    _colorbar(fig, mappable, ax, scale, value_label(s), pad=0.1 if three_d else 0.05)
    _single_title(fig, ds)
    return fig


def make_surface_figure(ds: xr.Dataset, settings: dict | None = None) -> Figure:
    """One 3-D surface with a colorbar."""
    return _single_loss_figure(ds, settings, three_d=True)


def make_contour_figure(ds: xr.Dataset, settings: dict | None = None) -> Figure:
    """Filled and labelled line contours, centre marked."""
    return _single_loss_figure(ds, settings, three_d=False)


def make_accuracy_figure(ds: xr.Dataset, settings: dict | None = None) -> Figure:
    """Contours of accuracy (%), linearly spaced levels, centre marked."""
    if "accuracy" not in ds:
        raise ValueError(f"surface of {_attr(ds, 'model')} has no accuracy")
    s = resolve_settings(settings)
    X, Y, accuracy = plot_grid(ds, "accuracy")
    shown = accuracy_percent(accuracy, plot_grid(ds)[2])
    lo, hi = _finite_range([shown])
    scale = ColourScale(np.linspace(lo, hi, s["levels"]), Normalize(lo, hi))
    fig = _new_figure((6.4, 5.2), s)
    ax = fig.add_subplot()
    filled = _draw_contour(ax, ds, X, Y, shown, scale, s)
    _colorbar(fig, filled, ax, scale, "accuracy (%)")
    d = describe(ds)
    _suptitle(fig, f"{d['model']}: {_attr(ds, 'method')} {_attr(ds, 'objective')} accuracy",
              [d["grid"], d["samples"], d["directions"]])
    return fig


def _draw_profile(ax, coord, loss, accuracy, xlabel: str, s: dict) -> list[Line2D]:
    """Loss along one coordinate (and accuracy on a twin axis when given); the lines."""
    handles = ax.plot(coord, clip_values(loss, s), marker=".", color="C0", label="loss")
    if s["log_scale"]:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(LogFormatter())
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(6))
    ax.set_ylabel("loss" + (f" (clipped at {s['zmax']:g})" if s["zmax"] is not None else ""))
    if accuracy is not None:
        twin = ax.twinx()
        handles += twin.plot(coord, accuracy_percent(accuracy, loss), marker=".", linestyle="--", color="C1",
                             label="accuracy")
        twin.set_ylabel("accuracy (%)")
    return handles


def _draw_slice(ax, ds: xr.Dataset, dim: str, s: dict) -> list[Line2D]:
    """Loss (and accuracy on a twin axis) along ``dim`` through the centre; the lines."""
    i, j = centre_index(ds)
    other, index = ("beta", j) if dim == "alpha" else ("alpha", i)
    line = ds.isel({other: index})
    accuracy = line["accuracy"].values if "accuracy" in ds else None
    handles = _draw_profile(ax, line[dim].values, line["loss"].values, accuracy,
                            ALPHA_LABEL if dim == "alpha" else BETA_LABEL, s)
    ax.set_title(f"along {dim} at {other} = {float(line[other]):g}", fontsize=9)
    return handles


def make_path_figure(ds: xr.Dataset, settings: dict | None = None) -> Figure:
    """A 1-D landscape: the line L(theta + t dx) (coordinate `alpha`) or the interpolation
    L((1 - t) theta_start + t theta_end) (coordinate `t`)."""
    s = resolve_settings(settings)
    fig = _new_figure((6.4, 4.2), s)
    ax = fig.add_subplot()
    accuracy = ds["accuracy"].values if "accuracy" in ds else None
    if "t" in ds.dims:
        xlabel = "t (0: start, 1: end)"
        title = (f"{_attr(ds, 'name')}: {_attr(ds, 'objective')} loss from {_attr(ds, 'start_model')} "
                 f"to {_attr(ds, 'end_model')}")
        details = [f"{_attr(ds, 'eval_samples')} eval samples", "straight path between the two weight vectors"]
        coord = ds["t"].values
    else:
        xlabel, coord = ALPHA_LABEL, ds["alpha"].values
        title = f"{_attr(ds, 'model')}: {_attr(ds, 'method')} {_attr(ds, 'objective')} loss along direction x"
        details = [f"{coord.size} points", f"{_attr(ds, 'eval_samples')} eval samples", directions_label(ds)]
    handles = _draw_profile(ax, coord, ds["loss"].values, accuracy, xlabel, s)
    if len(handles) > 1:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    _suptitle(fig, title, details)
    return fig


def make_slices_figure(ds: xr.Dataset, settings: dict | None = None) -> Figure:
    """Two panels: the surface along alpha at beta = 0 and along beta at alpha = 0."""
    s = resolve_settings(settings)
    fig = _new_figure((9.0, 3.8), s)
    for ax, dim in zip(fig.subplots(1, 2), ("alpha", "beta")):
        handles = _draw_slice(ax, ds, dim, s)
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    _single_title(fig, ds)
    return fig


def _common_and_own(described: list[dict[str, str]], skip: tuple[str, ...] = ()) -> tuple[list[str], list[list[str]]]:
    """Labels shared by all ``described`` dicts, and each one's remaining labels not keyed in ``skip``."""
    common = [k for k in described[0] if all(d[k] == described[0][k] for d in described)]
    own = [[d[k] for k in d if k not in common and k not in skip] for d in described]
    return [described[0][k] for k in common], own


def _split_details(entries: list[tuple[str, xr.Dataset]]) -> tuple[list[str], list[list[str]]]:
    """Labels shared by all entries, and each entry's own remaining labels.

    A column is headed by its entry label and method, so model and loss names (already in
    the label) are not repeated there."""
    return _common_and_own([describe(ds) for _, ds in entries], skip=("model", "loss"))


def _column_title(label: str, ds: xr.Dataset) -> str:
    method = _attr(ds, "method")
    return f"{label} ({methods.NAMES.get(method, method)})"


def make_comparison_figure(entries: list[tuple[str, xr.Dataset]], settings: dict | None = None,
                           title: str | None = None) -> Figure:
    """One column per entry: 3-D surface above contours, one shared colour scale."""
    if not entries:
        raise ValueError("comparison needs at least one entry")
    s = resolve_settings(settings)
    grids = [plot_grid(ds) for _, ds in entries]
    shown = [display_values(Z, s) for _, _, Z in grids]
    scale = colour_scale(shown, s)
    n = len(entries)
    fig = _new_figure((3.6 * n + 1.0, 7.0), s)
    common, own = _split_details(entries)
    for col, ((label, ds), (X, Y, _), Zd) in enumerate(zip(entries, grids, shown)):
        top = fig.add_subplot(2, n, col + 1, projection="3d")
        _draw_surface(top, X, Y, Zd, scale, s)
        top.set_title(_wrap([_column_title(label, ds), *own[col]], 3.4, 8), fontsize=8)
        filled = _draw_contour(fig.add_subplot(2, n, n + col + 1), ds, X, Y, Zd, scale, s)
    _colorbar(fig, filled, fig.axes, scale, value_label(s), pad=0.08)
    _suptitle(fig, title or " vs ".join(label for label, _ in entries), common)
    return fig


def _check_shared_axes(entries: list[tuple[str, xr.Dataset]]) -> None:
    first_label, first = entries[0]
    mismatched = [
        label for label, ds in entries[1:]
        if not all(ds[c].shape == first[c].shape and np.allclose(ds[c], first[c]) for c in ("alpha", "beta"))
    ]
    if mismatched:
        raise ValueError(f"basin overlay needs shared alpha/beta coords: {mismatched} differ from {first_label!r}")


def _basin_grid(ds: xr.Dataset, level: float) -> np.ndarray:
    """Z[j, i] with non-finite values replaced by a value outside the basin."""
    _, _, Z = plot_grid(ds)
    finite = np.isfinite(Z)
    return np.where(finite, Z, max(Z[finite].max(), level) + 1.0)


def make_basin_figure(entries: list[tuple[str, xr.Dataset]], settings: dict | None = None) -> Figure:
    """Each entry's basin boundary (loss = centre + delta) on one shared axes."""
    if not entries:
        raise ValueError("basin overlay needs at least one entry")
    _check_shared_axes(entries)
    s = resolve_settings(settings)
    delta = s["basin_delta"]
    fig = _new_figure((6.4, 5.6), s)
    ax = fig.add_subplot()
    X, Y, _ = plot_grid(entries[0][1])
    handles = []
    for k, ((label, ds), linestyle) in enumerate(zip(entries, itertools.cycle(LINESTYLES))):
        level = centre_loss(ds) + delta
        Z = _basin_grid(ds, level)
        if (Z > level).any():  # otherwise the whole grid is inside: no boundary to draw
            ax.contour(X, Y, Z, levels=[level], colors=f"C{k}", linestyles=linestyle, linewidths=1.8)
        fraction = share_below_level(ds, delta)
        handles.append(Line2D([], [], color=f"C{k}", linestyle=linestyle, linewidth=1.8,
                              label=f"{label}: {fraction:.1%} of grid"))
    _mark_centre(ax, entries[0][1])
    ax.set_xlim(X.min(), X.max())
    ax.set_ylim(Y.min(), Y.max())
    _grid_axes(ax, entries[0][1])
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncols=min(len(handles), 2))
    common, _ = _split_details(entries)
    _suptitle(fig, f"Basins: loss ≤ centre loss + {delta:g}", common)
    return fig


# --- Hessian spectrum ---------------------------------------------------------------

SPECTRUM_PAD = 0.05  # eigenvalue axis padded by this fraction of the eigenvalue range on each side
SPECTRUM_WIDTH = 0.01  # Gaussian width as a fraction of the eigenvalue axis
DENSITY_FLOOR = 1e-6  # density drawn no lower than this fraction of its peak (log axis)
SPECTRUM_COLUMNS = 3


def smoothed_density(nodes, weights, grid, width: float) -> np.ndarray:
    """Each weight spread on ``grid`` as a Gaussian of standard deviation ``width`` centred
    on its node and integrating to the weight."""
    offsets = (np.asarray(grid, float)[None, :] - np.asarray(nodes, float)[:, None]) / width
    kernels = np.exp(-0.5 * offsets**2) / (width * np.sqrt(2 * np.pi))
    return np.asarray(weights, float) @ kernels


def _spectrum_details(hessian: dict) -> dict[str, str]:
    density = hessian["density"]
    return {"samples": f"{hessian['eval_samples']} eval samples",
            "density": f"SLQ: {density['runs']} run{'s' * (density['runs'] != 1)} × {density['steps']} Lanczos steps"}


def _draw_spectrum(ax, hessian: dict) -> tuple[float, list[Line2D]]:
    """Smoothed density on a log axis over the nodes and marked eigenvalues, padded; the
    extreme eigenvalues as vertical lines. Returns the Gaussian width and the lines."""
    nodes, weights = hessian["density"]["nodes"], hessian["density"]["weights"]
    top, low = hessian["top_eigenvalues"], hessian["min_eigenvalue"]
    lo, hi = min(*nodes, low), max(*nodes, *top)
    pad = SPECTRUM_PAD * (hi - lo or max(abs(hi), 1.0))
    grid = np.linspace(lo - pad, hi + pad, 2001)
    width = SPECTRUM_WIDTH * (grid[-1] - grid[0])
    density = smoothed_density(nodes, weights, grid, width)
    floor = DENSITY_FLOOR * density.max()
    lines = ax.plot(grid, np.maximum(density, floor), color="C0", label="SLQ density, Gaussian-smoothed")
    lines += [ax.axvline(x, color="C3", linestyle="--", linewidth=0.9, label="top eigenvalues (Lanczos)")
              for x in top]
    lines.append(ax.axvline(low, color="C2", linestyle=":", linewidth=1.2, label="λ_min (Lanczos)"))
    ax.set_yscale("log")
    ax.set_ylim(floor, 2 * density.max())
    ax.set_xlim(grid[0], grid[-1])
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.set_xlabel("eigenvalue λ")
    ax.set_ylabel("density")
    return width, lines


def make_spectrum_figure(entries: list[tuple[str, dict]], settings: dict | None = None) -> Figure:
    """One panel per (label, hessian metrics) entry, up to three a row: the Hessian's
    eigenvalue density with its extreme eigenvalues marked and summarised above."""
    if not entries:
        raise ValueError("spectrum figure needs at least one entry")
    s = resolve_settings(settings)
    cols = min(len(entries), SPECTRUM_COLUMNS)
    rows = -(-len(entries) // cols)
    fig = _new_figure((4.2 * cols + 0.4, 3.4 * rows + 1.2), s)
    common, own = _common_and_own([_spectrum_details(h) for _, h in entries])
    for k, (label, h) in enumerate(entries):
        ax = fig.add_subplot(rows, cols, k + 1)
        width, lines = _draw_spectrum(ax, h)
        method = methods.NAMES.get(h["method"], h["method"])
        trace = h["trace"]
        stats = [f"λ_max {h['top_eigenvalues'][0]:.3g}", f"λ_min {h['min_eigenvalue']:.3g}",
                 f"|λ_min/λ_max| {h['ratio_min_max']:.3g}", f"tr H {trace['value']:.3g} ± {trace['stderr']:.2g}",
                 f"Gaussian width {width:.2g} ({SPECTRUM_WIDTH:.0%} of axis)"]
        heading = f"{label} ({method}): model {h['model']}, {h['objective']} loss"
        ax.set_title(_wrap([heading, *own[k], *stats], 4.0, 8), fontsize=8)
    handles = list({line.get_label(): line for line in lines}.values())  # one per kind of line
    fig.legend(handles=handles, loc="outside lower center", ncols=cols, fontsize=8)
    _suptitle(fig, "Hessian eigenvalue spectral density (stochastic Lanczos quadrature)", common)
    return fig


# --- output and checks --------------------------------------------------------------


def save_figure(fig: Figure, prefix: Path | str, kind: str, settings: dict | None = None) -> list[Path]:
    """Write ``{prefix}_{kind}.{fmt}`` for every format; return the paths."""
    s = resolve_settings(settings)
    paths = []
    for fmt in s["formats"]:
        path = Path(f"{prefix}_{kind}.{fmt}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=s["dpi"])
        paths.append(path)
    return paths


def plot_surface(ds: xr.Dataset, prefix: Path | str, settings: dict | None = None) -> list[Path]:
    return save_figure(make_surface_figure(ds, settings), prefix, "3d", settings)


def plot_contour(ds: xr.Dataset, prefix: Path | str, settings: dict | None = None) -> list[Path]:
    return save_figure(make_contour_figure(ds, settings), prefix, "contour", settings)


def plot_accuracy(ds: xr.Dataset, prefix: Path | str, settings: dict | None = None) -> list[Path]:
    return save_figure(make_accuracy_figure(ds, settings), prefix, "accuracy", settings)


def plot_slices(ds: xr.Dataset, prefix: Path | str, settings: dict | None = None) -> list[Path]:
    return save_figure(make_slices_figure(ds, settings), prefix, "slices", settings)


def plot_path(ds: xr.Dataset, prefix: Path | str, settings: dict | None = None) -> list[Path]:
    return save_figure(make_path_figure(ds, settings), prefix, "path", settings)


def plot_comparison(entries: list[tuple[str, xr.Dataset]], prefix: Path | str,
                    settings: dict | None = None, title: str | None = None) -> list[Path]:
    return save_figure(make_comparison_figure(entries, settings, title), prefix, "compare", settings)


def plot_basin_overlay(entries: list[tuple[str, xr.Dataset]], prefix: Path | str,
                       settings: dict | None = None) -> list[Path]:
    return save_figure(make_basin_figure(entries, settings), prefix, "basins", settings)


def plot_spectrum(entries: list[tuple[str, dict]], prefix: Path | str,
                  settings: dict | None = None) -> list[Path]:
    return save_figure(make_spectrum_figure(entries, settings), prefix, "spectrum", settings)


# A coarse map gets its value written in every cell; a finer one only the colours.
ANNOTATED_CELLS = 64


def make_ratio_map_figure(ds: xr.Dataset, settings: dict | None = None) -> Figure:
    """|lambda_min / lambda_max| of the full Hessian at each point of a coarse grid in the
    surface's plane, one cell per point, the trained weights starred."""
    s = resolve_settings(settings)
    ratio = ds["ratio"].values
    fig = _new_figure((6.4, 5.2), s)
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(ds["alpha"].values, ds["beta"].values, np.ma.masked_invalid(ratio.T), shading="nearest",
                         cmap=s["cmap"], vmin=0.0, vmax=max(float(np.nanmax(ratio)), 1e-12))
    if ratio.size <= ANNOTATED_CELLS:
        for i, a in enumerate(ds["alpha"].values):
            for j, b in enumerate(ds["beta"].values):
                ax.text(a, b, f"{ratio[i, j]:.2g}", ha="center", va="center", fontsize=7, color="white")
    _mark_centre(ax, ds)
    _grid_axes(ax, ds)
    fig.colorbar(mesh, ax=ax, shrink=0.7, label="|λ_min / λ_max|")
    d = describe(ds)
    _suptitle(fig, f"{d['model']}: {_attr(ds, 'method')} {_attr(ds, 'objective')} loss, |λ_min / λ_max| of the "
              "Hessian", [d["grid"], d["samples"], d["directions"]])
    return fig


def plot_ratio_map(ds: xr.Dataset, prefix: Path | str, settings: dict | None = None) -> list[Path]:
    return save_figure(make_ratio_map_figure(ds, settings), prefix, "ratio_map", settings)

