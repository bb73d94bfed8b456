"""Figures of training trajectories: the weights' path projected on the plane of their first two
principal components, drawn over the loss surface of that plane; training loss curves; and the
distance the weights travel. Each function returns a matplotlib Figure (Agg canvas, no pyplot
state); saving is done elsewhere (`figures/surfaces.py`'s `save_figure`).

A trajectory summary (`pca.json`) holds `steps`, `coords` (one [a, b] per snapshot, in the
surface's alpha/beta units, the final weights at (0, 0)), `explained_variance_ratio`, `scale`,
`normalization`, `in_plane`, `distance_to_final`, `distance_travelled` and `final_norm`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch

from vitlandscape.figures.surfaces import (
    _colorbar,
    _column_title,
    _common_and_own,
    _draw_contour,
    _new_figure,
    _suptitle,
    _wrap,
    colour_scale,
    describe,
    display_values,
    plot_grid,
    resolve_settings,
    value_label,
)
from vitlandscape.metrics.curves import check_curve, smoothed

SNAPSHOT_STYLE = {"linestyle": "none", "marker": "o", "markersize": 4, "markerfacecolor": "white",
                  "markeredgecolor": "black", "markeredgewidth": 0.8, "zorder": 4}
START_STYLE = {"linestyle": "none", "marker": "s", "markersize": 7, "color": "orange",
               "markeredgecolor": "black", "zorder": 5}
FINAL_STYLE = {"linestyle": "none", "marker": "o", "markersize": 12, "markerfacecolor": "none",
               "markeredgecolor": "red", "markeredgewidth": 1.8, "zorder": 5}
RAW_ALPHA = 0.25  # opacity of the per-step loss behind its epoch mean


# --- trajectory on the loss surface -------------------------------------------------------


def pc_label(k: int, ratio: float) -> str:
    """E.g. 'PC1 (73.2% of variance)'."""
    return f"PC{k} ({100 * ratio:.1f}% of variance)"


def path_of(summary: dict) -> tuple[np.ndarray, np.ndarray]:
    """Snapshot steps and (n, 2) plane coordinates, checked to match and be finite."""
    steps = np.asarray(summary["steps"], dtype=int)
    coords = np.asarray(summary["coords"], dtype=float)
    if coords.shape != (steps.size, 2) or steps.size < 2:
        raise ValueError(f"trajectory needs two or more snapshots with one [a, b] each: "
                         f"{steps.size} steps, coords of shape {coords.shape}")
    if not np.isfinite(coords).all():
        raise ValueError("trajectory coordinates are not all finite")
    return steps, coords


def outside_grid(ds: xr.Dataset, coords: np.ndarray) -> np.ndarray:
    """Which points of (n, 2) `coords` lie outside the surface's alpha/beta range."""
    alpha, beta = ds["alpha"].values, ds["beta"].values
    a, b = coords[:, 0], coords[:, 1]
    return (a < alpha.min()) | (a > alpha.max()) | (b < beta.min()) | (b > beta.max())


def _draw_path(ax, ds: xr.Dataset, summary: dict) -> list[Line2D]:
    """Snapshots joined by arrows in training order, start and final marked, PC axis labels and a
    note when part of the path is outside the grid (the axes then widen to show it all).
    Returns [snapshots, start, final]."""
    steps, xy = path_of(summary)
    handles = ax.plot(xy[:, 0], xy[:, 1], label=f"{steps.size} snapshots", **SNAPSHOT_STYLE)
    for a, b in zip(xy[:-1], xy[1:]):
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=8, color="black",
                                     linewidth=0.9, shrinkA=2, shrinkB=2, zorder=3))
    handles += ax.plot(*xy[0], label=f"start, step {steps[0]}", **START_STYLE)
    handles += ax.plot(0.0, 0.0, label=f"final, step {steps[-1]}", **FINAL_STYLE)
    ratios = summary["explained_variance_ratio"]
    ax.set_xlabel(pc_label(1, ratios[0]))
    ax.set_ylabel(pc_label(2, ratios[1]))
    outside = outside_grid(ds, xy)
    if outside.any():
        ax.text(0.02, 0.98, f"{outside.sum()} of {steps.size} snapshots outside\nthe grid (no loss there)",
                transform=ax.transAxes, va="top", fontsize=7,
                bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0})
    return handles


def _details(ds: xr.Dataset, summary: dict) -> dict[str, str]:
    """Short labels of what a trajectory panel shows, keyed by aspect."""
    d = describe(ds)
    ratios, steps = summary["explained_variance_ratio"], summary["steps"]
    return {"grid": d["grid"], "samples": d["samples"],
            "snapshots": f"{len(steps)} snapshots, steps {steps[0]}–{steps[-1]}",
            "plane": f"PCA plane: {100 * sum(ratios[:2]):.1f}% of variance",
            "directions": f"directions: {summary['normalization']}"}


def trajectory_figure(ds: xr.Dataset, summary: dict, title: str | None = None,
                      settings: dict | None = None) -> Figure:
    """Contours of `ds.loss` over the PCA plane with the training path on top."""
    s = resolve_settings(settings)
    X, Y, Z = plot_grid(ds)
    shown = display_values(Z, s)
    scale = colour_scale([shown], s)
    fig = _new_figure((6.4, 5.8), s)
    ax = fig.add_subplot()
    filled = _draw_contour(ax, ds, X, Y, shown, scale, s)
    handles = _draw_path(ax, ds, summary)
    _colorbar(fig, filled, ax, scale, value_label(s))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    d = describe(ds)
    _suptitle(fig, title or f"{d['model']}: training path on the {d['loss']} surface",
              list(_details(ds, summary).values()))
    return fig


def trajectory_comparison_figure(items: list[tuple[str, xr.Dataset, dict]], title: str | None = None,
                                 settings: dict | None = None) -> Figure:
    """One panel per (label, surface, summary), side by side, one shared colour scale."""
    if not items:
        raise ValueError("trajectory comparison needs at least one entry")
    s = resolve_settings(settings)
    grids = [plot_grid(ds) for _, ds, _ in items]
    shown = [display_values(Z, s) for _, _, Z in grids]
    scale = colour_scale(shown, s)
    fig = _new_figure((4.2 * len(items) + 1.2, 5.4), s)
    axes = fig.subplots(1, len(items), squeeze=False)[0]
    common, own = _common_and_own([_details(ds, summary) for _, ds, summary in items])
    for ax, (label, ds, summary), (X, Y, _), Zd, details in zip(axes, items, grids, shown, own):
        filled = _draw_contour(ax, ds, X, Y, Zd, scale, s)
        _draw_path(ax, ds, summary)
        ax.set_title(_wrap([_column_title(label, ds), *details], 3.8, 8), fontsize=8)
    _colorbar(fig, filled, list(axes), scale, value_label(s))
    generic = [Line2D([], [], label=name, **style) for name, style in
               (("snapshots", SNAPSHOT_STYLE), ("start", START_STYLE), ("final", FINAL_STYLE))]
    fig.legend(handles=generic, loc="outside lower center", ncols=3, fontsize=8)
    _suptitle(fig, title or " vs ".join(label for label, _, _ in items), ["training paths", *common])
    return fig


# --- training curves ------------------------------------------------------------------


def _draw_loss(ax, curves: dict[str, pd.DataFrame], column: str, colours: dict[str, str]) -> list[Line2D]:
    """Per curve the per-step values faint and their epoch mean solid, log y; the solid lines."""
    solid = []
    for label, curve in curves.items():
        ax.plot(curve["step"], curve[column], color=colours[label], alpha=RAW_ALPHA, linewidth=0.6)
        solid += ax.plot(curve["step"], smoothed(curve, column), color=colours[label], linewidth=1.6,
                         label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(column.replace("_", " "))
    return solid


def _draw_momentum(ax, curves: dict[str, pd.DataFrame], colours: dict[str, str]) -> None:
    twin = ax.twinx()
    for label, curve in curves.items():
        if "momentum" in curve:
            twin.plot(curve["step"], curve["momentum"], color=colours[label], linestyle="--", linewidth=1.0)
    twin.set_ylabel("EMA momentum (dashed)")


def loss_curves_figure(curves: dict[str, pd.DataFrame], column: str = "reconstruction_loss",
                       title: str | None = None, settings: dict | None = None) -> Figure:
    """Training loss against step, one colour per model (per step faint, one-epoch mean solid);
    a second panel with the consistency loss (and EMA momentum) of the curves that have one."""
    if not curves:
        raise ValueError("loss curves figure needs at least one curve")
    for label, curve in curves.items():
        check_curve(label, curve, column)
    consistent = {label: c for label, c in curves.items() if "consistency_loss" in c}
    for label, curve in consistent.items():
        check_curve(label, curve, "consistency_loss")
    s = resolve_settings(settings)
    fig = _new_figure((11.0 if consistent else 6.4, 4.4), s)
    axes = fig.subplots(1, 2 if consistent else 1, squeeze=False)[0]
    colours = {label: f"C{k}" for k, label in enumerate(curves)}
    handles = _draw_loss(axes[0], curves, column, colours)
    if consistent:
        _draw_loss(axes[1], consistent, "consistency_loss", colours)
        _draw_momentum(axes[1], consistent, colours)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8)
    _suptitle(fig, title or f"Training {column.replace('_', ' ')}",
              ["faint: per step", "solid: mean over the last epoch's steps"])
    return fig


# --- distances ----------------------------------------------------------------------


def _distances(label: str, summary: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps, distance travelled and distance to the final weights, checked to match."""
    steps = np.asarray(summary["steps"], dtype=float)
    travelled = np.asarray(summary["distance_travelled"], dtype=float)
    to_final = np.asarray(summary["distance_to_final"], dtype=float)
    if not steps.size == travelled.size == to_final.size:
        raise ValueError(f"trajectory of {label}: {steps.size} steps but {travelled.size} travelled and "
                         f"{to_final.size} to-final distances")
    return steps, travelled, to_final


def distance_figure(summaries: dict[str, dict], title: str | None = None, settings: dict | None = None) -> Figure:
    """Two panels against step: distance travelled and distance to the final weights. With one
    final weight norm for all entries, a right axis gives distances relative to it."""
    if not summaries:
        raise ValueError("distance figure needs at least one trajectory")
    s = resolve_settings(settings)
    norms = [float(summary["final_norm"]) for summary in summaries.values()]
    fig = _new_figure((10.0, 4.2), s)
    axes = fig.subplots(1, 2)
    handles = []
    for k, (label, summary) in enumerate(summaries.items()):
        steps, travelled, to_final = _distances(label, summary)
        handles += axes[0].plot(steps, travelled, marker=".", color=f"C{k}",
                                label=f"{label} (‖θ_final‖ = {norms[k]:.3g})")
        axes[1].plot(steps, to_final, marker=".", color=f"C{k}")
    for ax, name in zip(axes, ("distance travelled", "distance to final weights")):
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        if np.allclose(norms, norms[0], rtol=1e-9, atol=0) and norms[0] > 0:
            right = ax.secondary_yaxis("right", functions=(lambda d: d / norms[0], lambda r: r * norms[0]))
            right.set_ylabel("relative to ‖θ_final‖")
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), fontsize=8)
    _suptitle(fig, title or "Distance of the weights along training", ["L2 norm in weight space"])
    return fig
