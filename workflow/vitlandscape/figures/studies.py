"""Figures of a study (a sweep of training variants): its measures per setting with two-level
bootstrap intervals, and the contours of all its surfaces on one colour scale per objective.

A study's `summary.csv` holds one row per surface replicate (training seed x direction seed x
eval seed); the measures figure draws every replicate and, per (series, setting) cell, the
mean of the training seeds' means with its interval from metrics/intervals.py.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vitlandscape.figures import surfaces as fs
from vitlandscape.figures.stages import open_surface, printed
from vitlandscape.metrics.intervals import nested_interval

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
MEASURE_COLUMNS = 3
CONTOUR_COLUMNS = 6
SERIES_SPAN = 0.6  # width of a category the series' offsets spread over
JITTER = 0.3  # replicate points spread over this fraction of a series' offset step
INTERVAL_NOTE = "mean and 95% two-level bootstrap interval (training seeds, then direction/eval replicates)"


def series_labels(summary: pd.DataFrame) -> pd.Series:
    """Each row's series: `model/objective`."""
    return summary["model"].astype(str) + "/" + summary["objective"].astype(str)


def plotted_measures(summary: pd.DataFrame, measures: list[str]) -> list[str]:
    """The measures that are columns of `summary` with at least one value (error if none)."""
    kept = [m for m in measures if m in summary.columns and summary[m].notna().any()]
    if not kept:
        raise ValueError(f"no values of any of the measures {measures} in the study summary")
    return kept


def _categories(summary: pd.DataFrame, varies: str | None) -> tuple[pd.Series, list[str]]:
    """Each row's x category and the categories in order of first appearance: the settings,
    or for a seed study (`varies` None) the series themselves."""
    column = summary["setting"].astype(str) if varies else series_labels(summary)
    return column, list(dict.fromkeys(column))


def seed_groups(values: pd.Series, training_seeds: pd.Series) -> list[np.ndarray]:
    """The finite values grouped by training seed, in order of first appearance."""
    kept = values.notna()
    frame = pd.DataFrame({"value": values[kept], "seed": training_seeds[kept]})
    return [group["value"].to_numpy(float) for _, group in frame.groupby("seed", sort=False)]


def _jitter(n: int, width: float) -> np.ndarray:
    """Evenly spread offsets in [-width, width] (deterministic, unlike random jitter)."""
    return np.linspace(-width, width, n) if n > 1 else np.zeros(1)


def _draw_cell(ax, x: float, groups: list[np.ndarray], width: float, colour: str, marker: str,
               resamples: int, seed: int) -> None:
    """Every replicate as a faint point, the mean of the seeds' means as a large marker with its
    two-level bootstrap interval (no bar for a single value)."""
    values = np.concatenate(groups)
    ax.scatter(x + _jitter(values.size, width), values, s=10, color=colour, marker=marker, alpha=0.35,
               linewidths=0)
    mean = float(np.mean([g.mean() for g in groups]))
    if values.size == 1:
        ax.plot(x, mean, marker=marker, color=colour, markersize=7, linestyle="none")
        return
    low, high = nested_interval(groups, resamples=resamples, seed=seed)
    ax.errorbar(x, mean, yerr=[[mean - low], [high - mean]], fmt=marker, color=colour, markersize=7,
                capsize=3, elinewidth=1.2)


def _draw_measure(ax, summary: pd.DataFrame, measure: str, varies: str | None, resamples: int, seed: int) -> None:
    """One panel: every (series, category) cell of the measure, x ticks and labels."""
    series = series_labels(summary)
    names = list(dict.fromkeys(series))
    column, categories = _categories(summary, varies)
    step = SERIES_SPAN / len(names) if varies else 0.0
    width = JITTER * (step or SERIES_SPAN)
    for k, name in enumerate(names):
        offset = (k - (len(names) - 1) / 2) * step
        for x, category in enumerate(categories):
            cell = (series == name) & (column == category)
            if not summary.loc[cell, measure].notna().any():
                continue
            groups = seed_groups(summary.loc[cell, measure], summary.loc[cell, "training_seed"])
            _draw_cell(ax, x + offset, groups, width, f"C{k}", MARKERS[k % len(MARKERS)], resamples, seed)
    ax.set_xticks(range(len(categories)), categories, fontsize=8, rotation=0 if varies else 30,
                  ha="center" if varies else "right")
    ax.set_xlim(-0.5, len(categories) - 0.5)
    ax.set_xlabel(varies or "model/objective")
    ax.set_ylabel(measure)


def make_measures_figure(summary: pd.DataFrame, measures: list[str], varies: str | None,
                         settings: dict | None = None, title: str | None = None,
                         resamples: int = 10000, seed: int = 0) -> Figure:
    """One panel per measure (up to three a row): each series' replicates and mean with its
    interval at each setting of `varies` (or, for a seed study, one category per series)."""
    kept = plotted_measures(summary, measures)
    s = fs.resolve_settings(settings)
    cols = min(len(kept), MEASURE_COLUMNS)
    rows = -(-len(kept) // cols)
    fig = fs._new_figure((4.2 * cols + 0.4, 3.4 * rows + 1.4), s)
    for k, measure in enumerate(kept):
        _draw_measure(fig.add_subplot(rows, cols, k + 1), summary, measure, varies, resamples, seed)
    names = list(dict.fromkeys(series_labels(summary)))
    handles = [Line2D([], [], color=f"C{k}", marker=MARKERS[k % len(MARKERS)], linestyle="none", label=name)
               for k, name in enumerate(names)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8)
    studies = ", ".join(dict.fromkeys(summary["study"].astype(str)))
    fs._suptitle(fig, title or f"study {studies}", [INTERVAL_NOTE])
    return fig


def _objective(entries: list[tuple[str, xr.Dataset]]) -> str:
    """The entries' one objective (error naming each entry's if they differ)."""
    objectives = {label: fs._attr(ds, "objective") for label, ds in entries}
    if len(set(objectives.values())) > 1:
        raise ValueError(f"contours of one study figure need one objective, got {objectives}")
    return next(iter(objectives.values()))


def make_contours_figure(entries: list[tuple[str, xr.Dataset]], settings: dict | None = None,
                         title: str | None = None) -> Figure:
    """Contours of every entry, up to six a row, all on one colour scale with one colour bar."""
    if not entries:
        raise ValueError("contours figure needs at least one entry")
    objective = _objective(entries)
    s = fs.resolve_settings(settings)
    grids = [fs.plot_grid(ds) for _, ds in entries]
    shown = [fs.display_values(Z, s) for _, _, Z in grids]
    scale = fs.colour_scale(shown, s)
    cols = min(len(entries), CONTOUR_COLUMNS)
    rows = -(-len(entries) // cols)
    fig = fs._new_figure((3.4 * cols + 1.2, 3.0 * rows + 1.2), s)
    for k, ((label, ds), (X, Y, _), Zd) in enumerate(zip(entries, grids, shown)):
        ax = fig.add_subplot(rows, cols, k + 1)
        filled = fs._draw_contour(ax, ds, X, Y, Zd, scale, s)
        ax.set_title(label, fontsize=8)
    fs._colorbar(fig, filled, fig.axes, scale, fs.value_label(s))
    common, _ = fs._split_details(entries)
    fs._suptitle(fig, title or f"{objective} loss contours", common)
    return fig


def measures_figure(settings: dict, summary_path, prefix) -> list:
    """`{prefix}_measures` from the study's summary.csv; `settings`: the config's `figures` section
    under "figures", the study's name, varies, measures and bootstrap under "study"."""
    figures, study = settings["figures"], settings["study"]
    summary = pd.read_csv(summary_path, dtype={"setting": str})  # "64" and "0.1" stay the text of the setting
    bootstrap = study["bootstrap"]
    fig = make_measures_figure(summary, study["measures"], study["varies"], figures, title=f"study {study['name']}",
                               resamples=bootstrap["resamples"], seed=bootstrap["seed"])
    return printed(fs.save_figure(fig, prefix, "measures", figures))


def contours_figure(settings: dict, surface_paths: list, labels: list, prefix) -> list:
    """`{prefix}_contours_{objective}`: the surfaces (of one objective) on one colour scale;
    `settings`: the `figures` section under "figures", the study's name under "study"."""
    if len(labels) != len(surface_paths):
        raise ValueError(f"{len(surface_paths)} surfaces but {len(labels)} labels")
    entries = [(label, open_surface(path)) for label, path in zip(labels, surface_paths)]
    objective = _objective(entries)
    fig = make_contours_figure(entries, settings["figures"], title=f"study {settings['study']['name']}: {objective} loss")
    return printed(fs.save_figure(fig, prefix, f"contours_{objective}", settings["figures"]))
