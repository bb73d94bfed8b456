"""NaN and inf losses (far points where the model diverges): stored as computed, counted in
the attributes, warned about in the job log, drawn as gaps and left out of the metrics."""
import json
import math

import numpy as np
import pytest
import pyvista as pv
import torch
import xarray as xr

from vitlandscape.figures import interactive, surfaces
from vitlandscape.figures import stages as figures_stages
from vitlandscape.landscape import grid, tiles
from vitlandscape.metrics import basins, flatness, tables
from vitlandscape.storage.outputs import sha256, write_netcdf

ALPHA, BETA, TILE = [-1.0, 1.0, 11], [-1.0, 1.0, 11], [4, 4]
SETTINGS = {"name": "m", "method": "supervised", "objective": "supervised",
            "landscape": {"alpha": ALPHA, "beta": BETA, "tile": TILE}}
FAST = {"dpi": 40, "levels": 6, "formats": ["png"]}
# far corners: alpha -1 / beta 1 is NaN, alpha 1 / beta +-1 are inf
NAN_AT, INF_AT = [(0, 10)], [(10, 10), (10, 0)]
WARNING = ("WARNING: m/supervised: 3 of 121 grid points have a non-finite loss (2 inf, 1 NaN); "
           "figures and metrics leave them out")


def whole_surface():
    """A bowl 1 + a^2 + b^2 with accuracy 0.9 - 0.1 (a^2 + b^2), NaN and inf at far corners."""
    a, b = np.meshgrid(grid.axis(ALPHA), grid.axis(BETA), indexing="ij")
    loss, acc = 1 + a ** 2 + b ** 2, 0.9 - 0.1 * (a ** 2 + b ** 2)
    for i, j in NAN_AT:
        loss[i, j] = np.nan
    for i, j in INF_AT:
        loss[i, j] = np.inf
    return loss, acc


@pytest.fixture
def assembled(tmp_path, capsys):
    """(surface path, tile files, log of the assembly) of `whole_surface` tiled and assembled
    as the workflow does."""
    (tmp_path / "ckpt.pth").write_bytes(b"weights")
    (tmp_path / "dirs.safetensors").write_bytes(b"directions")
    attrs = {"model": "m", "method": "supervised", "objective": "supervised", "eval_samples": 8,
             "checkpoint_sha256": sha256(tmp_path / "ckpt.pth"),
             "directions_sha256": sha256(tmp_path / "dirs.safetensors"),
             "grid": grid.signature(ALPHA, BETA, TILE), "config_hash": tiles.config_hash(SETTINGS),
             "normalization": "filter", "perturb_1d": 0, "perturb_frozen": 0}
    loss, acc = whole_surface()
    files = []
    for name in grid.tile_names(ALPHA, BETA, TILE):
        sa, sb = grid.tile_slices(name, ALPHA, BETA, TILE)
        files.append(tmp_path / f"{name}.nc")
        write_netcdf(tiles.tile_dataset(loss[sa, sb], acc[sa, sb], grid.axis(ALPHA)[sa], grid.axis(BETA)[sb],
                                        attrs), files[-1])
    out = tmp_path / "s.zarr"
    capsys.readouterr()
    tiles.assemble(SETTINGS, files, tmp_path / "ckpt.pth", tmp_path / "dirs.safetensors", out)
    return out, files, capsys.readouterr().out


# --- storage, attributes, log -------------------------------------------------------------


def test_surface_keeps_nonfinite_losses_counts_them_and_warns_once(assembled):
    out, files, log = assembled
    ds = xr.open_zarr(out).load()
    loss, _ = whole_surface()
    np.testing.assert_array_equal(ds.loss.values, loss)  # NaN where NaN, inf where inf: never 0
    assert np.isnan(ds.loss.values[0, 10]) and np.isposinf(ds.loss.values[10, 10])
    assert (ds.attrs["nonfinite_points"], ds.attrs["nan_points"], ds.attrs["inf_points"]) == (3, 1, 2)
    assert log.count("WARNING") == 1 and WARNING in log.splitlines()
    assert "range 1.0000 .. 3.0000" in log  # the finite range, not "nan .. inf"
    # each tile counts its own
    counts = []
    for path in files:
        with xr.open_dataset(path, engine="scipy") as tile:
            counts.append((int(tile.attrs["nan_points"]), int(tile.attrs["inf_points"])))
    assert sum(n for n, _ in counts) == 1 and sum(i for _, i in counts) == 2


def test_a_tile_warns_and_a_clean_one_does_not(capsys):
    loss = np.array([[1.0, np.inf], [-np.inf, np.nan]])
    ds = tiles.tile_dataset(loss, np.full(loss.shape, np.nan), [0.0, 1.0], [0.0, 1.0], {"objective": "pretext"})
    assert (ds.attrs["nonfinite_points"], ds.attrs["nan_points"], ds.attrs["inf_points"]) == (3, 1, 2)
    tiles.warn_nonfinite(ds, "m/pretext tile a0_b0")
    clean = tiles.tile_dataset(np.ones((2, 2)), np.full((2, 2), np.nan), [0.0, 1.0], [0.0, 1.0],
                               {"objective": "pretext"})
    assert clean.attrs["nonfinite_points"] == 0
    tiles.warn_nonfinite(clean, "m/pretext tile a0_b1")
    assert capsys.readouterr().out.splitlines() == [
        "WARNING: m/pretext tile a0_b0: 3 of 4 grid points have a non-finite loss (2 inf, 1 NaN); "
        "figures and metrics leave them out"]


def test_line_file_counts_its_nonfinite_points(tmp_path, capsys):
    from vitlandscape.landscape import stages as landscape_stages  # imports torch and timm: only here
    t = np.linspace(-1, 1, 5)
    ds = landscape_stages._write_path(np.array([1.0, 0.5, 0.25, np.nan, np.inf]), np.full(5, np.nan), t, "alpha",
                                      {"model": "m", "objective": "pretext"}, tmp_path / "line.nc")
    log = capsys.readouterr().out
    with xr.open_dataset(tmp_path / "line.nc", engine="scipy") as read:
        assert int(read.attrs["nonfinite_points"]) == 2 and np.isposinf(read.loss.values[-1])
    assert ds.attrs["nan_points"] == 1 and ds.attrs["inf_points"] == 1
    assert f"{tmp_path / 'line.nc'}: 5 points, loss 0.2500 .. 1.0000" in log
    assert (f"WARNING: {tmp_path / 'line.nc'}: 2 of 5 points have a non-finite loss (1 inf, 1 NaN); "
            "figures and metrics leave them out") in log


# --- figures --------------------------------------------------------------------------------


def test_values_drawn_have_gaps_at_nonfinite_points_and_a_finite_colour_scale(assembled):
    ds = figures_stages.open_surface(assembled[0])
    for settings in ({}, {"log_scale": True}, {"zmax": 1.5}):
        s = surfaces.resolve_settings(settings)
        _, _, Z = surfaces.plot_grid(ds)
        shown = surfaces.display_values(Z, s)
        gaps = ~np.isfinite(shown)
        # Z[j, i] = loss[i, j]: the NaN at (0, 10) and the inf at (10, 10), (10, 0)
        assert gaps[10, 0] and gaps[10, 10] and gaps[0, 10] and gaps.sum() == 3
        lo, hi = surfaces.colour_scale([shown], s).limits
        assert math.isfinite(lo) and math.isfinite(hi)
    accuracy = surfaces.accuracy_percent(surfaces.plot_grid(ds, "accuracy")[2], Z)
    assert np.isnan(accuracy[10, 0]) and np.isnan(accuracy[0, 10]) and np.isfinite(accuracy).sum() == 118


def test_every_figure_kind_draws_with_gaps(assembled, tmp_path):
    ds = figures_stages.open_surface(assembled[0])
    contour = surfaces.make_contour_figure(ds, FAST)
    filled = contour.axes[0].collections[0]
    paths = filled.get_paths()
    # the filled contours cover the cells between finite points, not the part next to a non-finite one
    assert any(p.contains_point((0.7, 0.7)) for p in paths)
    for cell in ((0.95, 0.95), (-0.95, 0.95), (0.95, -0.95)):  # the triangle at the corner (corner_mask)
        assert not any(p.contains_point(cell) for p in paths)
    crossed = ds.copy(deep=True)
    crossed["loss"][0, 5] = np.inf  # on the slice along alpha at beta = 0
    slices = surfaces.make_slices_figure(crossed, FAST)
    assert np.isnan(slices.axes[0].lines[0].get_ydata()[0]) and np.isnan(slices.axes[2].lines[0].get_ydata()[0])
    along = surfaces.make_path_figure(ds.isel(beta=10).drop_vars("beta"), FAST)
    loss_line, accuracy_line = along.axes[0].lines[0], along.axes[1].lines[0]
    assert np.isnan(loss_line.get_ydata()[[0, 10]]).all() and np.isfinite(loss_line.get_ydata()[1:10]).all()
    assert np.isnan(accuracy_line.get_ydata()[[0, 10]]).all()
    surfaces.make_surface_figure(ds, FAST)
    surfaces.make_accuracy_figure(ds, FAST)
    surfaces.make_comparison_figure([("a", ds), ("b", ds)], FAST)
    surfaces.make_basin_figure([("a", ds)], {**FAST, "basin_delta": 0.5})
    written = figures_stages.surface_figures(FAST, assembled[0], tmp_path / "fig/m", tmp_path / "m.html",
                                             tmp_path / "m.vts")
    assert all(path.stat().st_size > 0 for path in written)


def test_interactive_views_leave_nonfinite_points_out(assembled, tmp_path):
    ds = figures_stages.open_surface(assembled[0])
    trace = interactive.make_plotly_figure(ds).data[0]
    assert trace.z[10][0] is None and trace.z[10][10] is None and trace.z[0][10] is None
    assert sum(v is None for row in trace.z for v in row) == 3
    read = pv.read(interactive.write_vts(ds, tmp_path / "m.vts"))
    hidden = np.flatnonzero(read.point_data["vtkGhostType"])
    assert sorted(hidden) == sorted(i + 11 * j for i, j in NAN_AT + INF_AT)  # point k = i + len(alpha) j
    assert np.isnan(read.points[hidden, 2]).all() and np.isfinite(read.points[:, 2]).sum() == 118
    assert read.bounds[5] == 3.0  # the height bounds leave the hidden points out


# --- metrics ----------------------------------------------------------------------------------

AXIS = np.linspace(-1, 1, 201)
A, B = np.meshgrid(AXIS, AXIS, indexing="ij")
R = np.hypot(A, B)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_basin_inside_a_far_nonfinite_ring_has_the_analytic_radius(value):
    """1 + r^2 with a ring at 0.8 < r < 0.85 of NaN / inf: the basin at level 1.25 is the disc of
    radius 0.5; at 1.81 it would reach r = 0.9, but the ring stops it, which censors it when the
    ring is NaN (the loss there is unknown) and not when it is inf (above every level)."""
    loss = 1 + R ** 2
    loss[(R > 0.8) & (R < 0.85)] = value
    inner = basins.basin(loss, AXIS, AXIS, 1.25)
    assert inner["mean_radius"] == pytest.approx(0.5, rel=0.01)
    assert inner["area"] == pytest.approx(math.pi * 0.25, rel=0.01)
    assert not inner["touches_edge"] and not inner["touches_nonfinite"]
    stopped = basins.basin(loss, AXIS, AXIS, 1.81)
    assert stopped["mean_radius"] == pytest.approx(0.8, rel=0.01)
    censored = bool(np.isnan(value))
    assert stopped["touches_nonfinite"] is censored and stopped["touches_edge"] is censored


def test_convex_region_leaves_out_stencils_that_touch_nonfinite_losses():
    """r^2/2 - r^4/4 is convex for r < 1/sqrt(3); a non-finite loss at (0.2, 0) takes the nine
    points whose stencils hold it out of the region, and censors it; one next to the centre
    leaves no convex region, censored, not a silent 0."""
    f = R ** 2 / 2 - R ** 4 / 4
    clean = basins.convex_region(f, AXIS, AXIS)
    assert not clean["touches_nonfinite"]
    for value in (np.nan, np.inf):
        cut = f.copy()
        cut[120, 100] = value
        found = basins.convex_region(cut, AXIS, AXIS)
        assert found["points"] == clean["points"] - 9
        assert found["touches_nonfinite"] and found["touches_edge"]
    beside = f.copy()
    beside[101, 100] = np.nan
    found = basins.convex_region(beside, AXIS, AXIS)
    assert found["points"] == 0 and found["touches_nonfinite"] and found["touches_edge"]


def test_sharpness_leaves_out_nonfinite_samples_and_counts_them():
    loss = 3 * R ** 2
    loss[(A > 0.45) & (np.abs(B) < 0.05)] = np.nan  # where the circle r = 0.5 crosses beta = 0
    loss[(A < -0.45) & (np.abs(B) < 0.05)] = np.inf
    found = basins.sharpness(loss, AXIS, AXIS, 0.5)
    assert found["mean_rise"] == pytest.approx(0.75, rel=1e-3) and found["max_rise"] == pytest.approx(0.75, rel=1e-3)
    assert 0 < found["nonfinite_samples"] < basins.RAYS // 10
    loss[(R > 0.45) & (R < 0.55)] = np.nan
    none_left = basins.sharpness(loss, AXIS, AXIS, 0.5)
    assert math.isnan(none_left["mean_rise"]) and none_left["nonfinite_samples"] == basins.RAYS


def test_bilinear_ignores_corners_of_weight_zero():
    value = basins.bilinear(np.array([[1.0, 2.0], [3.0, np.inf]]), np.array([0.0, 1.0]), np.array([0.0, 1.0]),
                            np.array([0.5, 0.5]), np.array([0.0, 0.5]))
    assert value[0] == 2.0 and np.isposinf(value[1])


def test_metrics_file_of_a_surface_with_nonfinite_points(assembled, tmp_path):
    cfg = {"relative_rises": [0.5], "absolute_rises": [0.25], "sharpness_rho": [0.5], "claims": []}
    tables.tables(cfg, [assembled[0]], [], [], tmp_path / "metrics")
    found = json.loads((tmp_path / "metrics/m/supervised.json").read_text())["surface"]
    assert found["nonfinite_points"] == 3 and found["centre_loss"] == 1.0
    assert found["sharpness"][0]["nonfinite_samples"] == 0 and math.isfinite(found["sharpness"][0]["mean_rise"])
    # the basin stays clear of the corners; the convex region reaches the stencils that hold them
    assert not found["relative_basins"][0]["touches_nonfinite"] and found["convex_region"]["touches_nonfinite"]


def test_a_centre_without_a_finite_loss_is_an_error_naming_the_surface(tmp_path):
    axis = np.linspace(-1, 1, 5)
    loss = np.ones((5, 5))
    loss[2, 2] = np.nan
    tiles.write_zarr(xr.Dataset({"loss": (("alpha", "beta"), loss)}, coords={"alpha": axis, "beta": axis},
                                attrs={"model": "m", "method": "mae", "objective": "pretext"}),
                     tmp_path / "s.zarr", chunks=(5, 5))
    cfg = {"relative_rises": [0.5], "absolute_rises": [0.25], "sharpness_rho": [0.5], "claims": []}
    with pytest.raises(ValueError, match=r"surface .*s\.zarr \(m/pretext\): the loss at the centre "
                                         r"\(alpha 0, beta 0\) is nan"):
        tables.tables(cfg, [tmp_path / "s.zarr"], [], [], tmp_path / "metrics")
    for measure in (lambda: basins.absolute_basins(loss, axis, axis, [0.1]),
                    lambda: basins.convex_region(loss, axis, axis),
                    lambda: basins.sharpness(loss, axis, axis, 0.5)):
        with pytest.raises(ValueError, match="the loss at the centre"):
            measure()


# --- flatness -------------------------------------------------------------------------------


class Scripted:
    """An objective whose n-th evaluation returns `losses[n]` (the centre first, then sample by
    sample, sigma by sigma, as gaussian_flatness evaluates), with a model to perturb."""

    def __init__(self, losses):
        self.model = torch.nn.Linear(3, 2, bias=False)
        self.losses = iter(losses)

    def evaluate(self):
        return next(self.losses), math.nan


def test_flatness_averages_the_finite_samples_and_counts_the_others():
    # sigmas (0.1, 1.0), 4 samples; at sigma 1.0 two samples diverge
    losses = [1.0, 1.1, 2.0, 1.3, math.inf, 1.2, math.nan, 1.4, 3.0]
    found = flatness.gaussian_flatness(Scripted(losses), [0.1, 1.0], 4, seed=0)
    small, large = np.array([0.1, 0.3, 0.2, 0.4]), np.array([1.0, 2.0])
    assert found["nonfinite_samples"] == [0, 2]
    np.testing.assert_allclose(found["mean_rise"], [small.mean(), large.mean()])
    np.testing.assert_allclose(found["stderr"], [small.std(ddof=1) / 2, large.std(ddof=1) / math.sqrt(2)])


def test_flatness_rise_is_nan_where_too_few_samples_are_finite():
    found = flatness.summarise(np.array([[0.5, math.inf, math.nan], [math.inf, math.inf, math.inf]]))
    assert found["nonfinite_samples"] == [2, 3]
    assert found["mean_rise"][0] == 0.5 and math.isnan(found["stderr"][0])
    assert math.isnan(found["mean_rise"][1]) and math.isnan(found["stderr"][1])


def test_flatness_refuses_a_centre_without_a_finite_loss():
    with pytest.raises(ValueError, match="loss at the trained weights is inf"):
        flatness.gaussian_flatness(Scripted([math.inf]), [0.1], 2, seed=0)
