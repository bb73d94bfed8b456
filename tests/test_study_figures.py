"""Study figures: measures per setting with two-level bootstrap intervals, shared-scale contours."""
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgba
from matplotlib.contour import ContourSet

from vitlandscape.figures import studies
from vitlandscape.figures import surfaces as figures_surfaces
from vitlandscape.metrics.intervals import nested_interval

FAST = {"dpi": 50, "levels": 8}
RESAMPLES = 200
SERIES = [("mae", "pretext"), ("sup", "supervised")]
SETTINGS = ["64", "128", "256"]
MEASURES = ["basin_radius_r0.5", "convex_area", "flatness_rel_s0.1", "not_a_column"]
ALPHA = np.linspace(-1, 1, 9)
BETA = np.linspace(-1, 1, 7)


def summary() -> pd.DataFrame:
    """2 series x 3 batch sizes x 2 training seeds x 2 direction seeds; one replicate of
    mae at 128 unmeasured (a cell of unequal seed groups); flatness never measured."""
    rng = np.random.default_rng(1)
    rows = []
    for k, (model, objective) in enumerate(SERIES):
        for j, setting in enumerate(SETTINGS):
            for training_seed in (0, 1):
                for direction_seed in (0, 1):
                    rows.append({
                        "study": "batch", "model": model, "variant": f"{model}.pretrain.batch_size={setting}",
                        "setting": setting, "training_seed": training_seed, "direction_seed": direction_seed,
                        "eval_seed": 0, "surface": f"{model}.directions={direction_seed}/{objective}",
                        "objective": objective, "method": model, "parameters": 100, "eval_samples": 64,
                        "centre_loss": 1.0,
                        "basin_radius_r0.5": 0.2 + 0.1 * j + 0.3 * k + 0.05 * training_seed + 0.02 * rng.random(),
                        "convex_area": 1.0 + j * k + 0.5 * direction_seed + 0.1 * rng.random(),
                        "flatness_rel_s0.1": np.nan,
                    })
    frame = pd.DataFrame(rows)
    frame.loc[(frame.model == "mae") & (frame.setting == "128") & (frame.training_seed == 1)
              & (frame.direction_seed == 0), "basin_radius_r0.5"] = np.nan
    return frame


def cells(frame: pd.DataFrame, measure: str):
    """(series label, setting) -> the cell's rows with a value of `measure`."""
    frame = frame[frame[measure].notna()]
    return {(f"{m}/{o}", s): frame[(frame.model == m) & (frame.objective == o) & (frame.setting == s)]
            for m, o in SERIES for s in SETTINGS}


def expected_cell(rows: pd.DataFrame, measure: str) -> tuple[float, tuple[float, float]]:
    """Mean of the training seeds' means and the nested interval, seeds in order of appearance."""
    groups = [rows.loc[rows.training_seed == t, measure].to_numpy() for t in rows.training_seed.unique()]
    return float(np.mean([g.mean() for g in groups])), nested_interval(groups, resamples=RESAMPLES, seed=3)


def legend_colours(fig) -> dict:
    """Series label -> its colour, read from the legend."""
    legend = fig.legends[0]
    return {t.get_text(): to_rgba(h.get_color()) for t, h in zip(legend.get_texts(), legend.legend_handles)}


def series_of(colour, colours: dict) -> str:
    """The series of a colour, opacity aside (replicate points are drawn faint)."""
    return next(name for name, c in colours.items() if np.allclose(c[:3], colour[:3]))


def measures_figure(frame=None, varies="pretrain.batch_size"):
    frame = summary() if frame is None else frame
    return studies.make_measures_figure(frame, MEASURES, varies, FAST, resamples=RESAMPLES, seed=3)


def test_measures_panels_skip_missing_and_unmeasured_and_label_the_setting():
    fig = measures_figure()
    panels = fig.axes
    assert [ax.get_ylabel() for ax in panels] == ["basin_radius_r0.5", "convex_area"]
    for ax in panels:
        assert ax.get_xlabel() == "pretrain.batch_size"
        assert [t.get_text() for t in ax.get_xticklabels()] == SETTINGS
    assert list(legend_colours(fig)) == ["mae/pretext", "sup/supervised"]
    assert fig.get_suptitle().startswith("study batch\n") and "two-level bootstrap" in fig.get_suptitle()
    with pytest.raises(ValueError, match="flatness_rel_s0.1.*not_a_column"):
        studies.make_measures_figure(summary(), ["flatness_rel_s0.1", "not_a_column"], None, FAST)


def test_error_bars_are_the_nested_interval_of_each_cell_at_its_mean():
    frame = summary()
    fig = measures_figure(frame)
    colours = legend_colours(fig)
    for ax in fig.axes:
        measure = ax.get_ylabel()
        drawn = {}
        for container in ax.containers:
            line, _, (bars,) = container.lines
            (x,), (y,) = line.get_data()
            (segment,) = bars.get_segments()
            assert np.allclose(segment[:, 0], x)
            key = (series_of(to_rgba(line.get_color()), colours), SETTINGS[round(x)])
            drawn[key] = (y, tuple(sorted(segment[:, 1])))
        expected = cells(frame, measure)
        assert set(drawn) == set(expected)
        for key, rows in expected.items():
            mean, interval = expected_cell(rows, measure)
            assert drawn[key][0] == pytest.approx(mean, rel=1e-12)
            assert drawn[key][1] == pytest.approx(interval, rel=1e-12)


def test_each_cell_draws_exactly_its_replicates():
    frame = summary()
    fig = measures_figure(frame)
    colours = legend_colours(fig)
    for ax in fig.axes:
        measure = ax.get_ylabel()
        drawn: dict = {}
        for points in (c for c in ax.collections if isinstance(c, PathCollection)):
            series = series_of(points.get_facecolor()[0], colours)
            for x, y in points.get_offsets():
                drawn.setdefault((series, SETTINGS[round(x)]), []).append(y)
        expected = cells(frame, measure)
        assert sorted(drawn) == sorted(expected)
        for key, rows in expected.items():
            assert sorted(drawn[key]) == pytest.approx(sorted(rows[measure])), key
    assert sum(len(v) for v in drawn.values()) == frame["convex_area"].notna().sum()


def test_seed_study_has_one_category_per_series_and_no_bar_for_a_single_value():
    frame = summary()
    frame = frame[(frame.setting == "64") & ~((frame.model == "sup") & (frame.training_seed + frame.direction_seed > 0))]
    fig = measures_figure(frame, varies=None)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["mae/pretext", "sup/supervised"]
    assert ax.get_xlabel() == "model/objective"
    (bar,) = ax.containers
    assert bar.lines[0].get_xdata() == [0]  # mae's four replicates: a bar; sup's one value: the mean alone
    single = frame.loc[frame.model == "sup", "basin_radius_r0.5"].item()
    markers = [line for line in ax.lines if line not in (bar.lines[0], *bar.lines[1])]
    assert [(tuple(line.get_xdata()), tuple(line.get_ydata())) for line in markers] == [((1,), (single,))]


def surface(scale: float, objective: str = "pretext", model: str = "mae") -> xr.Dataset:
    a, b = np.meshgrid(ALPHA, BETA, indexing="ij")
    loss = 0.5 + scale * (2 * a ** 2 + b ** 2)
    return xr.Dataset({"loss": (("alpha", "beta"), loss)}, coords={"alpha": ALPHA, "beta": BETA},
                      attrs={"model": model, "method": model, "objective": objective, "eval_samples": 64,
                             "normalization": "filter", "perturb_1d": 0, "perturb_frozen": 0})


def test_contours_share_one_colour_scale_over_all_entries():
    entries = [(f"mae seed {k}", surface(0.5 + k)) for k in range(7)]
    fig = studies.make_contours_figure(entries, FAST)
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    panels = [ax for ax in fig.axes if ax not in bars]
    assert len(bars) == 1 and [ax.get_title() for ax in panels] == [label for label, _ in entries]
    assert panels[0].get_subplotspec().get_gridspec().get_geometry() == (2, 6)
    contours = [c for ax in panels for c in ax.collections if isinstance(c, ContourSet)]
    assert len(contours) == 2 * len(entries)
    every = np.concatenate([ds.loss.values.ravel() for _, ds in entries])
    assert {(c.norm.vmin, c.norm.vmax) for c in contours} == {(every.min(), every.max())}
    assert len({tuple(c.levels) for c in contours}) == 1


def test_contours_refuse_mixed_objectives_and_no_entries():
    with pytest.raises(ValueError, match="'sup': 'supervised'"):
        studies.make_contours_figure([("mae", surface(1.0)), ("sup", surface(1.0, "supervised", "sup"))], FAST)
    with pytest.raises(ValueError, match="at least one"):
        studies.make_contours_figure([], FAST)


def stage_settings() -> dict:
    figures = {**figures_surfaces.resolve_settings(None), "formats": ["png"], "dpi": 50}
    return {"figures": figures, "study": {"name": "batch", "varies": "pretrain.batch_size", "measures": MEASURES,
                                          "bootstrap": {"resamples": RESAMPLES, "seed": 0}}}


def test_the_stages_write_the_measures_and_a_contours_figure_of_one_objective(tmp_path):
    summary_path = tmp_path / "summary.csv"
    summary().to_csv(summary_path, index=False)
    surfaces = [surface(1.0), surface(3.0), surface(2.0, "supervised", "sup")]
    paths = [tmp_path / f"s{k}.zarr" for k in range(len(surfaces))]
    for ds, path in zip(surfaces, paths):
        ds.to_zarr(path)
    prefix = tmp_path / "figures" / "batch"
    written = studies.measures_figure(stage_settings(), summary_path, prefix)
    written += studies.contours_figure(stage_settings(), paths[:2], ["mae 1", "mae 3"], prefix)
    assert written == [tmp_path / "figures" / f"batch_{kind}.png" for kind in ("measures", "contours_pretext")]
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(p.name for p in written)
    with pytest.raises(ValueError, match="3 surfaces but 2 labels"):
        studies.contours_figure(stage_settings(), paths, ["mae 1", "sup"], prefix)
    with pytest.raises(ValueError, match="one objective"):
        studies.contours_figure(stage_settings(), paths, ["mae 1", "mae 3", "sup"], prefix)
