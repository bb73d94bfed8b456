"""Figures and interactive exports of synthetic loss surfaces."""

import itertools
import json
import re

import numpy as np
import pytest
import pyvista as pv
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.text import Text

from conftest import validated
from vitlandscape import methods
from vitlandscape.figures import interactive, stages
from vitlandscape.figures import surfaces as figures_surfaces

ALPHA = np.linspace(-1, 1, 9)
BETA = np.linspace(-0.5, 1, 7)
FAST = {"dpi": 50, "levels": 8}
ATTRS = {
    "model": "vit_tiny_mae", "method": "mae", "objective": "pretext", "eval_samples": 256,
    "normalization": "filter", "perturb_1d": 0, "perturb_frozen": 0,
}


def surface(centre=(0.0, 0.0), scale=1.0, tilt=0.3, accuracy=False, far_points=True, **attrs) -> xr.Dataset:
    """Anisotropic, tilted quadratic bowl on a non-square grid; NaN and inf at two far corners."""
    a, b = np.meshgrid(ALPHA, BETA, indexing="ij")
    loss = 1.0 + scale * (3 * (a - centre[0]) ** 2 + 0.5 * (b - centre[1]) ** 2 + tilt * a * b)
    if far_points:
        loss[0, -1], loss[-1, -1] = np.nan, np.inf
    ds = xr.Dataset({"loss": (("alpha", "beta"), loss)}, coords={"alpha": ALPHA, "beta": BETA},
                    attrs={**ATTRS, **attrs})
    if accuracy:
        ds["accuracy"] = (("alpha", "beta"), 0.9 - 0.05 * np.nan_to_num(loss, nan=5, posinf=5))
    return ds


def two_entries():
    return [("MAE", surface()), ("supervised", surface(centre=(0.3, 0.2), scale=3.0, accuracy=True,
                                                       method="supervised", objective="supervised"))]


def line(accuracy=True) -> xr.Dataset:
    """A 1-D landscape along direction x, as the line stage writes it."""
    loss = 1.0 + 3 * ALPHA ** 2
    ds = xr.Dataset({"loss": (("alpha",), loss)}, coords={"alpha": ALPHA}, attrs=ATTRS)
    if accuracy:
        ds["accuracy"] = (("alpha",), 0.9 - 0.1 * ALPHA ** 2)
    return ds


def interpolation() -> xr.Dataset:
    t = np.linspace(-0.25, 1.25, 13)
    return xr.Dataset({"loss": (("t",), 1 + np.sin(np.pi * t) ** 2)}, coords={"t": t},
                      attrs={"name": "mae_to_rcmae", "objective": "pretext", "start_model": "mae",
                             "end_model": "rcmae", "eval_samples": 256})


EIGENVALUES = np.array([-0.3, 0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 3.2, 5.1])


def hessian(eigenvalues=EIGENVALUES, **attrs) -> dict:
    """Metrics of a diagonal Hessian as the metrics stage writes them: exact eigenvalues,
    and two quadrature runs that each find them all (weight 1/n in all; the density is known)."""
    values = np.linalg.eigvalsh(np.diag(eigenvalues))
    top = values[::-1][:3]
    return {
        "model": "vit_tiny_mae", "method": "mae", "objective": "pretext", "parameters": values.size,
        "eval_samples": 256, "centre_loss": 0.55, "top_eigenvalues": top.tolist(),
        "top_residuals": [1e-9] * 3, "min_eigenvalue": float(values[0]), "min_residual": 1e-9,
        "ratio_min_max": abs(values[0] / top[0]), "lanczos": {"steps": 20, "products": 24, "seconds": 3.1},
        "trace": {"value": float(values.sum()), "stderr": 0.4, "probes": 10, "products": 10, "seconds": 1.2},
        "density": {"nodes": [*values, *values], "weights": [0.5 / values.size] * 2 * values.size, "runs": 2,
                    "steps": 20, "products": 40, "seconds": 0.5},
        **attrs,
    }


def spectra():
    return [("mae/pretext", hessian()),
            ("sup/supervised", hessian(EIGENVALUES * 3 - 1, model="vit_tiny_sup", method="supervised",
                                       objective="supervised", eval_samples=512)),
            ("rcmae/pretext", hessian(EIGENVALUES ** 2, model="vit_tiny_rcmae", method="rcmae")),
            ("flat/pretext", hessian(np.ones(4)))]


def ratio_map() -> xr.Dataset:
    """|lambda_min / lambda_max| on a 5 x 5 grid, 0 at the centre, as the ratio-map stage writes it."""
    a, b = np.meshgrid(ALPHA[::2], BETA[::2], indexing="ij")
    ratio = 0.8 * (a ** 2 + b ** 2)
    return xr.Dataset({"ratio": (("alpha", "beta"), ratio), "lambda_max": (("alpha", "beta"), 10 + 0 * ratio),
                       "lambda_min": (("alpha", "beta"), -10 * ratio)},
                      coords={"alpha": ALPHA[::2], "beta": BETA[::2]}, attrs=ATTRS)


FIGURES = {
    "3d": (figures_surfaces.make_surface_figure, figures_surfaces.plot_surface, surface),
    "contour": (figures_surfaces.make_contour_figure, figures_surfaces.plot_contour, surface),
    "accuracy": (figures_surfaces.make_accuracy_figure, figures_surfaces.plot_accuracy, lambda: surface(accuracy=True)),
    "slices": (figures_surfaces.make_slices_figure, figures_surfaces.plot_slices, lambda: surface(accuracy=True)),
    "compare": (figures_surfaces.make_comparison_figure, figures_surfaces.plot_comparison, two_entries),
    "basins": (figures_surfaces.make_basin_figure, figures_surfaces.plot_basin_overlay, two_entries),
    "path": (figures_surfaces.make_path_figure, figures_surfaces.plot_path, line),
    "spectrum": (figures_surfaces.make_spectrum_figure, figures_surfaces.plot_spectrum, spectra),
    "ratio_map": (figures_surfaces.make_ratio_map_figure, figures_surfaces.plot_ratio_map, ratio_map),
}


# What the figure tests check of every figure: no drawn text runs into another.

def _drawn_texts(artist, owner: Axes | None = None,
                 axis: Axis | None = None) -> list[tuple[Text, Axes | None, Axis | None]]:
    """Visible, non-empty texts under ``artist``, each with the axes it belongs to and,
    for tick labels, the axis.

    Invisible subtrees are skipped, an axis contributes only the ticks it draws,
    and contour labels are left out (they sit on their lines by design).
    """
    if not artist.get_visible():
        return []
    if isinstance(artist, Text):
        return [(artist, owner, axis)] if artist.get_text().strip() else []
    if isinstance(artist, Axis):
        return (_drawn_texts(artist.label, owner) + _drawn_texts(artist.offsetText, owner)
                + [found for tick in artist._update_ticks()  # private: the ticks drawn
                   for found in _drawn_texts(tick, owner, artist)])
    if isinstance(artist, Axes):
        owner = artist
        clabels = {t for c in artist.collections if isinstance(c, ContourSet) for t in c.labelTexts}
        children = [c for c in artist.get_children() if c not in clabels]
    else:
        children = artist.get_children()
    return [found for child in children for found in _drawn_texts(child, owner, axis)]


def _intersect(a, b, gap: float = 0.0) -> bool:
    """Whether two boxes overlap or come closer than `gap` pixels."""
    return min(a.x1, b.x1) + gap > max(a.x0, b.x0) and min(a.y1, b.y1) + gap > max(a.y0, b.y0)


def text_overlaps(fig: Figure) -> list[tuple[Text, Text | Axes]]:
    """Drawn texts that overlap another text or another 2-D axes' plotting area.

    Contour labels are not checked; 3-D axes are checked only as text owners
    (their area is mostly empty space).
    """
    fig.canvas.draw()
    texts = _drawn_texts(fig)
    fig.canvas.draw()  # listing ticks resets 3-D tick label positions; place them again
    boxes = {text: text.get_window_extent() for text, _, _ in texts}
    flat = [ax for ax in fig.axes if ax.name != "3d"]
    gap = 2 * fig.dpi / 72  # tick labels of one axis closer than 2 pt read as one number
    overlaps = [(a, b) for (a, _, axis_a), (b, _, axis_b) in itertools.combinations(texts, 2)
                if _intersect(boxes[a], boxes[b], gap if axis_a is not None and axis_a is axis_b else 0.0)]
    overlaps += [(text, ax) for text, owner, _ in texts for ax in flat
                 if ax is not owner and _intersect(boxes[text], ax.get_window_extent())]
    return overlaps


def describe_overlaps(fig):
    return [(a.get_text(), getattr(b, "get_text", lambda: repr(b))()) for a, b in text_overlaps(fig)]


@pytest.mark.parametrize("kind", FIGURES)
@pytest.mark.parametrize("extra", [{}, {"log_scale": True, "zmax": 3.0}])
def test_figure_files_are_valid_and_text_does_not_overlap(tmp_path, kind, extra):
    make, plot, data = FIGURES[kind]
    settings = {**FAST, **extra}
    fig = make(data(), settings)
    assert describe_overlaps(fig) == []

    prefix = tmp_path / "nested" / "dir" / "m"
    paths = plot(data(), prefix, settings)
    assert paths == [tmp_path / "nested" / "dir" / f"m_{kind}.{fmt}" for fmt in ("png", "pdf")]
    image = imread(paths[0])
    width, height = fig.get_size_inches() * settings["dpi"]
    assert image.shape[:2] == (round(height), round(width))
    assert image[..., :3].std() > 0.05
    assert len(np.unique(image[..., :3].reshape(-1, 3), axis=0)) > 30
    assert paths[1].read_bytes().startswith(b"%PDF")


def test_formats_setting_controls_outputs(tmp_path):
    paths = figures_surfaces.plot_contour(surface(), tmp_path / "m", {**FAST, "formats": ["png"]})
    assert paths == [tmp_path / "m_contour.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_contour.png"]


def test_text_overlaps_finds_overlapping_texts_and_text_over_colorbar():
    fig = Figure(figsize=(4, 3), dpi=50, layout="constrained")
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, "first")
    ax.text(0.5, 0.5, "second")
    assert ("first", "second") in describe_overlaps(fig)

    fig = Figure(figsize=(4, 3), dpi=50)
    ax = fig.add_axes((0.1, 0.1, 0.5, 0.8))
    bar_ax = fig.add_axes((0.7, 0.1, 0.1, 0.8))
    ax.set_xlim(0, 1)
    ax.text(0.95, 0.5, "reaches into the colorbar")
    pairs = text_overlaps(fig)
    assert [(a.get_text(), b) for a, b in pairs] == [("reaches into the colorbar", bar_ax)]


def test_plot_grid_puts_alpha_on_x_and_beta_on_y():
    ds = surface(centre=(0.75, 0.0), tilt=0.0, far_points=False)
    X, Y, Z = figures_surfaces.plot_grid(ds)
    assert X.shape == Y.shape == Z.shape == (BETA.size, ALPHA.size)
    loss = ds["loss"].values
    for i, j in [(0, 0), (8, 0), (2, 5), (8, 6)]:
        assert (X[j, i], Y[j, i], Z[j, i]) == (ALPHA[i], BETA[j], loss[i, j])
    j, i = np.unravel_index(Z.argmin(), Z.shape)
    assert (X[j, i], Y[j, i]) == (0.75, 0.0)


def test_contour_draws_the_minimum_on_the_right():
    fig = figures_surfaces.make_contour_figure(surface(centre=(0.75, 0.0), tilt=0.0, far_points=False), FAST)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "alpha (direction x)" and ax.get_ylabel() == "beta (direction y)"
    assert ax.get_xlim() == (-1.0, 1.0) and ax.get_ylim() == (-0.5, 1.0)
    filled = next(c for c in ax.collections if c.get_paths())
    lowest_band = filled.get_paths()[0].vertices
    assert lowest_band[:, 0].min() > 0.4 and abs(lowest_band[:, 1].mean()) < 0.3


def test_contour_levels_are_log_spaced_over_clipped_finite_data():
    s = figures_surfaces.resolve_settings({"zmax": 3.0, "levels": 6})
    shown = figures_surfaces.display_values(surface().loss.values, s)
    scale = figures_surfaces.colour_scale([shown], s)
    assert scale.limits == (1.0, 3.0)
    assert np.allclose(np.diff(np.log(scale.levels)), np.log(3.0) / 5)

    log = figures_surfaces.resolve_settings({"log_scale": True, "levels": 6})
    scale = figures_surfaces.colour_scale([figures_surfaces.display_values(surface().loss.values, log)], log)
    finite = surface().loss.values[np.isfinite(surface().loss.values)]
    assert np.allclose(scale.limits, np.log10([finite.min(), finite.max()]))
    assert np.allclose(np.diff(scale.levels), np.diff(scale.levels)[0])


def test_accuracy_figure_shows_percent_and_needs_accuracy():
    ds = surface(accuracy=True)
    fig = figures_surfaces.make_accuracy_figure(ds, FAST)
    filled = next(c for c in fig.axes[0].collections if c.get_paths())
    accuracy = 100 * ds.accuracy.values[np.isfinite(ds.loss.values)]  # none drawn where the loss is not finite
    assert np.allclose(filled.levels[[0, -1]], [accuracy.min(), accuracy.max()])
    assert fig.axes[1].get_ylabel() == "accuracy (%)" and "pretext accuracy" in fig.get_suptitle()
    with pytest.raises(ValueError, match="no accuracy"):
        figures_surfaces.make_accuracy_figure(surface(), FAST)


def test_colour_scale_rejects_surface_without_finite_values():
    with pytest.raises(ValueError, match="no finite"):
        figures_surfaces.colour_scale([np.full((3, 3), np.nan)], figures_surfaces.resolve_settings({}))


def test_comparison_shares_one_colour_scale_and_z_range():
    fig = figures_surfaces.make_comparison_figure(two_entries(), FAST)
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    panels = [ax for ax in fig.axes if ax not in bars]
    assert len(bars) == 1 and len(panels) == 4
    norms = {(c.norm.vmin, c.norm.vmax) for ax in panels for c in ax.collections if c.get_array() is not None}
    finite = np.concatenate([ds.loss.values[np.isfinite(ds.loss.values)] for _, ds in two_entries()])
    assert norms == {(finite.min(), finite.max())}
    surfaces = [ax for ax in panels if ax.name == "3d"]
    assert {ax.get_zlim() for ax in surfaces} == {(finite.min(), finite.max())}
    levels = [tuple(c.levels) for ax in panels for c in ax.collections if hasattr(c, "levels") and c.filled]
    assert len(levels) == 2 and levels[0] == levels[1]


def test_titles_say_what_was_plotted():
    fig = figures_surfaces.make_contour_figure(surface(), FAST)
    title = fig.get_suptitle()
    for expected in ["vit_tiny_mae", "mae pretext loss", "9×7 grid", "α∈[-1, 1]", "β∈[-0.5, 1]",
                     "256 eval samples", "filter-norm, weights only"]:
        assert expected in title
    fig = figures_surfaces.make_comparison_figure(two_entries(), FAST, title="MAE vs supervised")
    assert fig.get_suptitle().startswith("MAE vs supervised\n")
    assert fig.axes[2].get_title().startswith("supervised (supervised ViT)")


def test_path_figures_label_line_and_interpolation():
    fig = figures_surfaces.make_path_figure(line(accuracy=False), FAST)
    assert fig.get_suptitle().startswith("vit_tiny_mae: mae pretext loss along direction x\n")
    assert fig.axes[0].get_xlabel() == figures_surfaces.ALPHA_LABEL and len(fig.axes) == 1
    fig = figures_surfaces.make_path_figure(interpolation(), FAST)
    assert fig.get_suptitle().startswith("mae_to_rcmae: pretext loss from mae to rcmae")
    assert fig.axes[0].get_xlabel().startswith("t (0: start, 1: end)")
    x, y = fig.axes[0].lines[0].get_data()
    np.testing.assert_allclose(y, interpolation().loss.values)
    assert describe_overlaps(fig) == []


def test_labels_of_directions_and_missing_attributes():
    assert figures_surfaces.directions_label(surface(perturb_1d=1)) == "filter-norm, weights +1-D"
    assert figures_surfaces.directions_label(surface(perturb_1d="true", perturb_frozen=1, normalization="layer")) == \
        "layer-norm, weights +1-D +frozen"
    bare = surface()
    bare.attrs = {}
    assert figures_surfaces.describe(bare) == {
        "model": "?", "loss": "? ? loss", "grid": "9×7 grid, α∈[-1, 1], β∈[-0.5, 1]",
        "samples": "? eval samples", "directions": "?-norm, weights +1-D? +frozen?",
    }
    figures_surfaces.make_slices_figure(bare, FAST)


def test_settings_take_figure_keys_of_the_config_section_over_defaults():
    section = {"dpi": 72, "zmax": None, "compare": [{"name": "a", "surfaces": ["m/pretext", "n/pretext"]}]}
    assert figures_surfaces.resolve_settings(section) == {**figures_surfaces.DEFAULTS, "dpi": 72}
    assert figures_surfaces.resolve_settings(None) == figures_surfaces.DEFAULTS


def test_drawing_defaults_are_the_schemas(default_config):
    """A library call without settings draws as a config without a `figures` section does."""
    config = validated({**default_config, "figures": {}})
    drawing = {k: v for k, v in config["figures"].items() if k not in figures_surfaces.NOT_DRAWING}
    assert figures_surfaces.DEFAULTS == drawing and set(drawing) >= {"zmax", "levels", "basin_delta", "formats"}


def test_share_below_level_counts_every_point_under_the_level():
    a, b = np.meshgrid(ALPHA, BETA, indexing="ij")
    ds = xr.Dataset({"loss": (("alpha", "beta"), 2 + a**2 + b**2)}, coords={"alpha": ALPHA, "beta": BETA})
    # a^2 + b^2 <= 0.3: alpha 0 with |beta| <= 0.5 (5), alpha +-0.25 with |beta| <= 0.25 (2 x 3),
    # alpha +-0.5 with beta 0 (2): 13 of 63 points.
    assert figures_surfaces.share_below_level(ds, 0.3) == pytest.approx(13 / 63)
    ds["loss"][5, 2] = np.nan  # alpha 0.25, beta 0: inside, but NaN counts as outside
    ds["loss"][0, 6] = -np.inf
    assert figures_surfaces.share_below_level(ds, 0.3) == pytest.approx(12 / 63)
    ds["loss"][4, 2] = np.inf
    with pytest.raises(ValueError, match="centre"):
        figures_surfaces.share_below_level(ds, 0.3)


def test_basin_overlay_draws_each_level_set_with_its_area_in_the_legend():
    entries = [("wide", surface()), ("sharp", surface(scale=3.0))]
    fig = figures_surfaces.make_basin_figure(entries, {**FAST, "basin_delta": 0.5})
    ax = fig.axes[0]
    levels = [list(c.levels) for c in ax.collections]
    assert levels == [[figures_surfaces.centre_loss(ds) + 0.5] for _, ds in entries]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    fractions = [figures_surfaces.share_below_level(ds, 0.5) for _, ds in entries]
    assert labels == [f"wide: {fractions[0]:.1%} of grid", f"sharp: {fractions[1]:.1%} of grid"]
    assert fractions[0] > fractions[1] > 0


def test_basin_overlay_refuses_entries_on_other_axes():
    other = surface().assign_coords(beta=BETA * 2)
    with pytest.raises(ValueError, match="'wide'"):
        figures_surfaces.make_basin_figure([("MAE", surface()), ("same", surface()), ("wide", other)], FAST)


def test_centre_is_the_grid_point_nearest_zero():
    ds = surface().assign_coords(alpha=ALPHA + 0.1, beta=BETA - 0.05)
    assert figures_surfaces.centre_index(ds) == (4, 2)
    assert figures_surfaces.centre_loss(ds) == ds.loss.values[4, 2]


def test_html_is_offline_and_carries_the_data(tmp_path):
    ds = surface(accuracy=True)
    path = interactive.write_html(ds, tmp_path / "html" / "m.html")
    html = path.read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", html)
    assert "vit_tiny_mae" in html and "filter-norm, weights only" in html
    assert repr(float(ds.loss.values[2, 5])) in html
    assert repr(float(ds.accuracy.values[6, 1])) in html

    trace = interactive.make_plotly_figure(ds, {"zmax": 3.0}).data[0]
    loss = ds.loss.values
    assert trace.z[5][2] == min(loss[2, 5], 3.0) and trace.z[6][0] is None and trace.z[6][8] is None
    assert trace.customdata[1][6] == [loss[6, 1], ds.accuracy.values[6, 1]]
    assert "accuracy" in trace.hovertemplate


def test_vts_reads_back_with_alpha_fastest(tmp_path):
    ds = surface(accuracy=True)
    path = interactive.write_vts(ds, tmp_path / "vts" / "m.vts", {"zmax": 4.0})
    grid = pv.read(path)
    assert isinstance(grid, pv.StructuredGrid) and grid.dimensions == (9, 7, 1)
    loss = ds.loss.values
    for i, j in [(0, 0), (8, 0), (2, 5), (3, 6)]:
        k = i + ALPHA.size * j
        assert np.allclose(grid.points[k], (ALPHA[i], BETA[j], min(loss[i, j], 4.0)))
        assert grid.point_data["loss"][k] == loss[i, j]
        assert grid.point_data["accuracy"][k] == ds.accuracy.values[i, j]
    for i, j in [(0, 6), (8, 6)]:  # NaN and inf are hidden points of NaN height and keep their raw value
        k = i + ALPHA.size * j
        assert np.isnan(grid.points[k][2]) and grid.point_data["vtkGhostType"][k] != 0
    assert np.array_equal(grid.point_data["loss"], loss.ravel(order="F"), equal_nan=True)


def test_text_overlaps_reports_tick_labels_that_run_together():
    fig = Figure(figsize=(3, 2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlim(-1, 1)
    assert describe_overlaps(fig) == []
    ax.set_xticks(np.linspace(-1, 1, 15))
    crowded = describe_overlaps(fig)
    assert crowded and all(a.startswith(("−", "0", "1")) for a, _ in crowded)


def test_smoothed_density_integrates_to_one_around_the_quadrature_mean():
    weights = np.arange(1, EIGENVALUES.size + 1) / np.arange(1, EIGENVALUES.size + 1).sum()
    grid = np.linspace(-2, 7, 20001)
    density = figures_surfaces.smoothed_density(EIGENVALUES, weights, grid, width=0.05)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, rel=1e-6)
    mean = np.trapezoid(grid * density, grid)
    assert mean == pytest.approx(weights @ EIGENVALUES, rel=1e-6)
    variance = np.trapezoid((grid - mean) ** 2 * density, grid)
    assert variance == pytest.approx(weights @ (EIGENVALUES - mean) ** 2 + 0.05**2, rel=1e-6)


def test_spectrum_has_a_panel_per_entry_marking_the_extreme_eigenvalues():
    entries = spectra()
    fig = figures_surfaces.make_spectrum_figure(entries, FAST)
    assert len(fig.axes) == len(entries)
    assert fig.get_suptitle().startswith("Hessian eigenvalue spectral density (stochastic Lanczos quadrature)\n")
    assert "SLQ: 2 runs × 20 Lanczos steps" in fig.get_suptitle() and "eval samples" not in fig.get_suptitle()
    for ax, (label, h) in zip(fig.axes, entries):
        assert ax.get_yscale() == "log"
        dashed = [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--"]
        dotted = [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":"]
        assert dashed == h["top_eigenvalues"] and dotted == [h["min_eigenvalue"]]
        x, y = ax.lines[0].get_data()
        lo, hi = ax.get_xlim()
        assert (x[0], x[-1]) == (lo, hi) and lo < min(h["density"]["nodes"]) and hi > max(h["density"]["nodes"])
        assert np.all(y > 0) and np.all(np.isfinite(y))
        title = ax.get_title()
        method = methods.NAMES[h["method"]]
        for expected in [label, method, h["model"], f"{h['objective']} loss", f"{h['eval_samples']} eval samples",
                         f"λ_max {h['top_eigenvalues'][0]:.3g}", f"λ_min {h['min_eigenvalue']:.3g}",
                         f"|λ_min/λ_max| {h['ratio_min_max']:.3g}", f"tr H {h['trace']['value']:.3g} ± 0.4",
                         "(1% of axis)"]:
            assert expected in title.replace("\n", " ")
    assert fig.axes[3].get_xlim() == pytest.approx((0.95, 1.05))  # one eigenvalue: padded by 5 % of it
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "SLQ density, Gaussian-smoothed", "top eigenvalues (Lanczos)", "λ_min (Lanczos)"]
    with pytest.raises(ValueError, match="at least one entry"):
        figures_surfaces.make_spectrum_figure([], FAST)


def test_spectrum_density_peaks_at_the_eigenvalues():
    separated = np.array([-0.3, 0.5, 2.0, 3.2, 5.1])
    fig = figures_surfaces.make_spectrum_figure([("mae/pretext", hessian(separated))], FAST)
    x, y = fig.axes[0].lines[0].get_data()
    peaks = x[1:-1][(y[1:-1] > y[:-2]) & (y[1:-1] > y[2:])]
    np.testing.assert_allclose(peaks, separated, atol=2 * (x[1] - x[0]))


def test_spectrum_figure_reads_hessian_files(tmp_path, capsys):
    files = []
    for label, h in spectra()[:2]:
        files.append(tmp_path / f"{label.replace('/', '_')}.json")
        files[-1].write_text(json.dumps(h))
    settings = {**FAST, "formats": ["png", "svg"]}
    paths = stages.spectrum_figure(settings, files, ["mae/pretext", "sup/supervised"], tmp_path / "out" / "all")
    assert paths == [tmp_path / "out" / "all_spectrum.png", tmp_path / "out" / "all_spectrum.svg"]
    assert capsys.readouterr().out.split() == [str(p) for p in paths]
    assert "sup/supervised" in paths[1].read_text()
    with pytest.raises(ValueError, match="2 Hessian files but 1 labels"):
        stages.spectrum_figure(settings, files, ["mae/pretext"], tmp_path / "bad")


def test_ratio_map_cells_show_the_values_at_their_points():
    """One cell per grid point (alpha along x), coloured and labelled by its ratio."""
    ds = ratio_map()
    fig = figures_surfaces.make_ratio_map_figure(ds, FAST)
    ax = fig.axes[0]
    mesh = ax.collections[0]
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(ds.beta.size, ds.alpha.size),
                               ds.ratio.values.T)
    labels = {(t.get_position(), t.get_text()) for t in ax.texts}
    i, j = 4, 1
    assert ((ds.alpha.values[i], ds.beta.values[j]), f"{ds.ratio.values[i, j]:.2g}") in labels
    assert len(ax.texts) == ds.ratio.size
