"""Trajectory, training-curve and distance figures of synthetic inputs contain what they claim."""
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from matplotlib.colors import LogNorm
from matplotlib.contour import ContourSet
from matplotlib.patches import FancyArrowPatch
from test_figures import text_overlaps

from vitlandscape.figures import surfaces, trajectories
from vitlandscape.metrics.curves import smoothed

FAST = {"dpi": 40, "levels": 8}
GRID = np.linspace(-1, 1, 11)


def surface(scale=1.0, offset=0.5, **attrs) -> xr.Dataset:
    a, b = np.meshgrid(GRID, GRID, indexing="ij")
    return xr.Dataset({"loss": (("alpha", "beta"), offset + scale * (2 * a ** 2 + b ** 2))},
                      coords={"alpha": GRID, "beta": GRID},
                      attrs={"model": "vit_tiny_mae", "method": "mae", "objective": "pretext", "eval_samples": 128,
                             **attrs})


def summary(n=6, reach=0.9, final_norm=40.0) -> dict:
    """A curved path of n snapshots from (reach, 0.3 reach) into the final weights at (0, 0)."""
    t = np.linspace(0, 1, n)
    coords = np.c_[reach * (1 - t), 0.3 * reach * np.sin(np.pi * t) + 0.3 * reach * (1 - t)]
    coords[-1] = 0.0
    return {"steps": [100 * k for k in range(n)], "coords": coords.tolist(),
            "explained_variance_ratio": [0.73216, 0.15449], "scale": [1.0, 1.0], "normalization": "filter",
            "in_plane": [1.0] * n, "distance_to_final": (10 * (1 - t)).tolist(),
            "distance_travelled": (12 * t ** 0.5).tolist(), "final_norm": final_norm}


def the_axes(fig):
    """The panels that show a path (those with snapshot arrows)."""
    return [ax for ax in fig.axes if any(isinstance(p, FancyArrowPatch) for p in ax.patches)]


def arrows(ax):
    return [p for p in ax.patches if isinstance(p, FancyArrowPatch)]


def filled_contours(ax):
    return [c for c in ax.collections if isinstance(c, ContourSet) and c.filled]


def line(ax, label):
    found = [ln for ln in ax.get_lines() if ln.get_label() == label]
    assert len(found) == 1, [ln.get_label() for ln in ax.get_lines()]
    return found[0]


def note(ax):
    return [t.get_text() for t in ax.texts if "outside" in t.get_text()]


def overlaps(fig):
    return [(a.get_text(), getattr(b, "get_text", lambda: repr(b))()) for a, b in text_overlaps(fig)]


def test_trajectory_figure_draws_the_path_in_order_over_the_log_scaled_surface():
    s = summary(n=6)
    fig = trajectories.trajectory_figure(surface(), s, settings=FAST)
    [ax] = the_axes(fig)
    coords = np.array(s["coords"])
    path = arrows(ax)
    assert len(path) == 5
    for k, arrow in enumerate(path):  # one arrow from each snapshot to the next
        np.testing.assert_allclose(arrow._posA_posB, coords[k:k + 2])
    snapshots = line(ax, "6 snapshots")
    np.testing.assert_array_equal(snapshots.get_xdata(), coords[:, 0])
    np.testing.assert_array_equal(snapshots.get_ydata(), coords[:, 1])
    start, final = line(ax, "start, step 0"), line(ax, "final, step 500")
    assert (start.get_xdata(), start.get_ydata()) == ((coords[0, 0],), (coords[0, 1],))
    assert (final.get_xdata(), final.get_ydata()) == ((0.0,), (0.0,))
    assert ax.get_xlabel() == "PC1 (73.2% of variance)" and ax.get_ylabel() == "PC2 (15.4% of variance)"
    [filled] = filled_contours(ax)
    assert isinstance(filled.norm, LogNorm)  # as the other landscape figures: log-spaced levels
    np.testing.assert_allclose(filled.levels, np.geomspace(0.5, 3.5, FAST["levels"]))
    legend = {t.get_text() for legend in fig.legends for t in legend.get_texts()}
    assert legend == {"6 snapshots", "start, step 0", "final, step 500"}
    assert note(ax) == []
    assert "PCA plane: 88.7% of variance" in fig.get_suptitle()
    assert overlaps(fig) == []


def test_a_path_leaving_the_grid_gets_a_note_and_stays_in_view():
    s = summary(n=7, reach=1.6)
    fig = trajectories.trajectory_figure(surface(), s, settings=FAST)
    [ax] = the_axes(fig)
    coords = np.array(s["coords"])
    outside = (np.abs(coords) > 1).any(axis=1).sum()
    assert 0 < outside < 7
    assert note(ax) == [f"{outside} of 7 snapshots outside\nthe grid (no loss there)"]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x0 <= -1 and x1 > coords[:, 0].max() and y0 <= -1 and y1 >= 1
    assert overlaps(fig) == []


def test_outside_grid_checks_both_coordinates_on_both_sides():
    points = np.array([[0, 0], [1, 1], [-1, -1], [1.01, 0], [-1.01, 0], [0, 1.01], [0, -1.01], [2, 2]])
    np.testing.assert_array_equal(trajectories.outside_grid(surface(), points), [False] * 3 + [True] * 5)


def test_comparison_shares_one_colour_scale_over_both_surfaces():
    items = [("MAE", surface(), summary(n=5)), ("RC-MAE", surface(scale=3.0, offset=0.2, method="rcmae"),
                                                 summary(n=8, reach=1.4))]
    fig = trajectories.trajectory_comparison_figure(items, "MAE vs RC-MAE", settings=FAST)
    panels = the_axes(fig)
    assert [len(arrows(ax)) for ax in panels] == [4, 7]
    (first,), (second,) = (filled_contours(ax) for ax in panels)
    assert first.norm is second.norm
    np.testing.assert_array_equal(first.levels, second.levels)
    assert (first.norm.vmin, first.norm.vmax) == pytest.approx((0.2, 9.2))  # min of one, max of the other
    assert len(fig.axes) == 3  # two panels, one colorbar on the shared scale
    bar = fig.axes[-1]._colorbar
    assert bar.norm is first.norm and bar.ax.get_position().x0 > max(ax.get_position().x1 for ax in panels)
    assert [note(ax) != [] for ax in panels] == [False, True]
    assert [ax.get_title().split("\n")[0] for ax in panels][0].startswith("MAE (MAE)")
    assert "RC-MAE (RC-MAE)" in panels[1].get_title()
    assert fig.get_suptitle().startswith("MAE vs RC-MAE")
    assert overlaps(fig) == []


def test_bad_summaries_are_refused():
    s = summary()
    with pytest.raises(ValueError, match="6 steps, coords of shape"):
        trajectories.trajectory_figure(surface(), {**s, "coords": s["coords"][:-1]}, settings=FAST)
    with pytest.raises(ValueError, match="two or more snapshots"):
        trajectories.trajectory_figure(surface(), {**s, "steps": [0], "coords": [[0, 0]]}, settings=FAST)
    with pytest.raises(ValueError, match="not all finite"):
        trajectories.trajectory_figure(surface(), {**s, "coords": [[np.nan, 0]] + s["coords"][1:]}, settings=FAST)
    with pytest.raises(ValueError, match="at least one"):
        trajectories.trajectory_comparison_figure([], "nothing", settings=FAST)


def training_curve(tau, consistency=False, n=200, epoch=10) -> pd.DataFrame:
    t = np.arange(n)
    loss = 0.2 + np.exp(-t / tau) * (1 + 0.2 * np.sin(t))
    c = pd.DataFrame({"step": t, "epoch": t // epoch, "wall_s": 0.1 * (t + 1), "lr": 1e-3, "loss": loss,
                      "reconstruction_loss": loss})
    if consistency:
        c["consistency_loss"] = 0.05 + 0.1 * np.exp(-t / 40) * (1 + 0.3 * np.cos(t))
        c["momentum"] = 0.996 + 0.004 * t / n
    return c


def test_loss_curves_show_the_raw_loss_faint_and_its_epoch_mean_solid():
    curves = {"MAE": training_curve(60), "supervised": training_curve(30, epoch=20)}
    fig = trajectories.loss_curves_figure(curves, settings=FAST)
    [ax] = fig.axes
    assert ax.get_yscale() == "log"
    lines = ax.get_lines()
    assert len(lines) == 4
    for (label, c), raw, mean in zip(curves.items(), lines[::2], lines[1::2]):
        np.testing.assert_array_equal(raw.get_xdata(), c["step"])
        np.testing.assert_array_equal(raw.get_ydata(), c["reconstruction_loss"])
        np.testing.assert_array_equal(mean.get_ydata(), smoothed(c, "reconstruction_loss"))
        assert raw.get_alpha() < 0.5 and mean.get_alpha() is None and mean.get_label() == label
        assert raw.get_color() == mean.get_color()
    assert overlaps(fig) == []


def test_consistency_loss_and_momentum_get_a_second_panel():
    curves = {"MAE": training_curve(60), "RC-MAE": training_curve(30, consistency=True)}
    fig = trajectories.loss_curves_figure(curves, settings=FAST)
    assert len(fig.axes) == 3  # loss, consistency loss, momentum twin
    _, panel, twin = fig.axes
    rc = curves["RC-MAE"]
    raw, mean = panel.get_lines()
    np.testing.assert_array_equal(raw.get_ydata(), rc["consistency_loss"])
    np.testing.assert_array_equal(mean.get_ydata(), smoothed(rc, "consistency_loss"))
    assert panel.get_yscale() == "log" and panel.get_ylabel() == "consistency loss"
    [momentum] = twin.get_lines()
    np.testing.assert_array_equal(momentum.get_ydata(), rc["momentum"])
    assert "momentum" in twin.get_ylabel()
    assert mean.get_color() == line(fig.axes[0], "RC-MAE").get_color() == momentum.get_color()
    assert overlaps(fig) == []


def test_loss_curves_refuse_a_curve_that_cannot_be_trusted():
    broken = training_curve(30)
    broken.loc[12, "reconstruction_loss"] = np.nan
    with pytest.raises(ValueError, match="RC-MAE.*reconstruction_loss is nan at step 12"):
        trajectories.loss_curves_figure({"MAE": training_curve(60), "RC-MAE": broken}, settings=FAST)
    with pytest.raises(ValueError, match="MAE has no column 'pretext'"):
        trajectories.loss_curves_figure({"MAE": training_curve(60)}, column="pretext", settings=FAST)


def test_distance_figure_plots_both_distances_with_a_relative_axis():
    s = summary(n=6, final_norm=40.0)
    fig = trajectories.distance_figure({"MAE": s}, settings=FAST)
    travelled, to_final = fig.axes[:2]
    for ax, key in ((travelled, "distance_travelled"), (to_final, "distance_to_final")):
        [drawn] = ax.get_lines()
        np.testing.assert_array_equal(drawn.get_xdata(), s["steps"])
        np.testing.assert_array_equal(drawn.get_ydata(), s[key])
        [right] = ax.child_axes
        assert right.get_ylabel() == "relative to ‖θ_final‖"
        fig.canvas.draw()
        np.testing.assert_allclose(right.get_ylim(), np.array(ax.get_ylim()) / 40.0)
    assert travelled.get_ylabel() == "distance travelled" and to_final.get_ylabel() == "distance to final weights"
    assert overlaps(fig) == []


def test_distance_figure_with_different_final_norms_names_them_instead():
    fig = trajectories.distance_figure({"MAE": summary(final_norm=40.0), "RC-MAE": summary(n=4, final_norm=30.0)},
                                       settings=FAST)
    assert all(ax.child_axes == [] for ax in fig.axes)
    legend = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert legend == ["MAE (‖θ_final‖ = 40)", "RC-MAE (‖θ_final‖ = 30)"]
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2]
    s = summary()
    with pytest.raises(ValueError, match="RC-MAE: 6 steps but 5 travelled"):
        trajectories.distance_figure({"RC-MAE": {**s, "distance_travelled": s["distance_travelled"][1:]}},
                                     settings=FAST)


def test_figures_save_as_png_and_pdf(tmp_path):
    fig = trajectories.trajectory_figure(surface(), summary(), settings=FAST)
    paths = surfaces.save_figure(fig, tmp_path / "mae", "trajectory", FAST)
    assert [p.name for p in paths] == ["mae_trajectory.png", "mae_trajectory.pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)
