"""The grid engine on its own: in-place perturbation, weights restored, values kept as they
come (NaN and inf included), tiles assembled into their slots and nowhere else."""
import math

import numpy as np
import pytest
import torch
import xarray as xr

from vitlandscape.landscape import grid, surface, tiles
from vitlandscape.storage.outputs import write_netcdf

ALPHA, BETA, TILE = [-1.0, 1.0, 5], [0.0, 3.0, 4], [2, 3]


class Scripted:
    """An objective whose loss is read off the weights: loss = 10 * w0 + w1 at the current point,
    except where `specials` says otherwise."""

    def __init__(self, specials=None, fail_at=None):
        self.model = torch.nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.model.weight.copy_(torch.tensor([[0.25, -0.5]]))
        self.specials, self.fail_at = specials or {}, fail_at
        self.calls = 0

    def evaluate(self):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("out of memory")
        w0, w1 = self.model.weight[0].tolist()
        loss = 10 * w0 + w1
        return self.specials.get(round(loss, 6), loss), w0


def directions(x=(1.0, 0.0), y=(0.0, 1.0)):
    return {"x": {"weight": torch.tensor([list(x)])}, "y": {"weight": torch.tensor([list(y)])}}


def test_points_are_theta_plus_a_dx_plus_b_dy_and_weights_come_back():
    objective = Scripted()
    theta = objective.model.weight.detach().clone()
    perturbation = surface.Perturbation(objective.model, directions(x=(1.0, 2.0), y=(-3.0, 0.5)))
    points = [(0.0, 0.0), (1.0, 0.0), (0.5, -2.0), (-1.0, 4.0)]
    losses, accs = surface.evaluate_points(objective, perturbation, points)
    for (a, b), loss, w0 in zip(points, losses, accs):
        expected = theta.double()[0] + a * torch.tensor([1.0, 2.0]).double() + b * torch.tensor([-3.0, 0.5]).double()
        assert math.isclose(w0, expected[0].item(), rel_tol=1e-6, abs_tol=1e-7)
        assert math.isclose(loss, 10 * expected[0].item() + expected[1].item(), rel_tol=1e-6, abs_tol=1e-6)
    assert torch.equal(objective.model.weight, theta)


def test_weights_come_back_when_an_evaluation_fails():
    objective = Scripted(fail_at=3)
    theta = objective.model.weight.detach().clone()
    perturbation = surface.Perturbation(objective.model, directions())
    with pytest.raises(RuntimeError, match="out of memory"):
        surface.evaluate_points(objective, perturbation, [(0.0, 0.0), (1.0, 1.0), (2.0, 2.0), (3.0, 3.0)])
    assert torch.equal(objective.model.weight, theta)


def test_x_only_perturbation_leaves_y_out():
    objective = Scripted()
    perturbation = surface.Perturbation(objective.model, {"x": {"weight": torch.tensor([[1.0, 1.0]])}, "y": {}})
    losses, _ = surface.evaluate_points(objective, perturbation, [(2.0, 5.0)])
    assert math.isclose(losses[0], 10 * 2.25 + 1.5, rel_tol=1e-6)


def test_nan_and_inf_are_kept_as_they_come():
    # at theta + a * dx: loss = 10 * (0.25 + a) - 0.5 = 2 + 10 a
    specials = {2.0: math.nan, 12.0: math.inf, -8.0: -math.inf}
    objective = Scripted(specials=specials)
    perturbation = surface.Perturbation(objective.model, directions())
    losses, _ = surface.evaluate_tile(objective, perturbation, np.array([-1.0, 0.0, 1.0, 0.5]), np.array([0.0]))
    assert np.isneginf(losses[0, 0]) and np.isnan(losses[1, 0]) and np.isposinf(losses[2, 0])
    assert losses[3, 0] == pytest.approx(7.0)


def test_perturbation_refuses_directions_that_do_not_fit():
    model = torch.nn.Linear(2, 1, bias=False)
    unknown = {"bias": torch.zeros(1), "scale": torch.zeros(1)}
    with pytest.raises(ValueError, match="parameters the model does not have: bias, scale"):
        surface.Perturbation(model, {"x": unknown, "y": unknown})
    with pytest.raises(ValueError, match=r"direction for weight has shape \(2,\), parameter \(1, 2\)"):
        surface.Perturbation(model, {"x": {"weight": torch.zeros(2)}, "y": {"weight": torch.zeros(2)}})


ATTRS = {"model": "m", "method": "mae", "objective": "pretext", "checkpoint": "c.pt", "checkpoint_sha256": "c0",
         "directions_sha256": "d0", "grid": grid.signature(ALPHA, BETA, TILE), "eval_samples": 24, "mask_seed": 3,
         "mask_ratio": 0.75, "config_hash": "h0"}
EXPECTED = {k: ATTRS[k] for k in ("checkpoint_sha256", "directions_sha256", "grid", "config_hash")}


def whole_grid():
    """Distinct values everywhere, NaN and inf included: loss[i, j] = 100 i + j."""
    loss = 100.0 * np.arange(5)[:, None] + np.arange(4)[None, :]
    loss[1, 2], loss[4, 3], loss[0, 0] = np.nan, np.inf, -np.inf
    return loss, loss / 1000


def write_tiles(folder, loss, acc, change=None):
    """One file a tile, cut from the whole grid by hand (not with grid.tile_slices)."""
    alphas, betas = np.linspace(*ALPHA[:2], 5), np.linspace(*BETA[:2], 4)
    files = []
    for i in range(3):
        for j in range(2):
            rows, cols = slice(2 * i, min(2 * i + 2, 5)), slice(3 * j, min(3 * j + 3, 4))
            attrs = {**ATTRS, **((change or {}).get(f"a{i}_b{j}", {}))}
            ds = tiles.tile_dataset(loss[rows, cols], acc[rows, cols], alphas[rows], betas[cols], attrs)
            files.append(folder / f"a{i}_b{j}.nc")
            write_netcdf(ds, files[-1])
    return files


def test_assembly_puts_every_tile_in_its_slot(tmp_path):
    loss, acc = whole_grid()
    files = write_tiles(tmp_path, loss, acc)
    tiles.join(files[::-1], ALPHA, BETA, TILE, tmp_path / "s.zarr", EXPECTED)
    ds = xr.open_zarr(tmp_path / "s.zarr")
    np.testing.assert_array_equal(ds.loss.values, loss)  # NaN == NaN and inf == inf here
    np.testing.assert_array_equal(ds.accuracy.values, acc)
    assert np.isnan(ds.loss.values[1, 2]) and np.isposinf(ds.loss.values[4, 3]) and np.isneginf(ds.loss.values[0, 0])
    np.testing.assert_array_equal(ds.alpha.values, np.linspace(-1, 1, 5))
    assert ds.loss.encoding["chunks"] == (2, 3) and ds.attrs["config_hash"] == "h0"


@pytest.mark.parametrize("key", ["model", "method", "objective", "checkpoint", "eval_samples", "mask_seed",
                                 "mask_ratio"])
def test_assembly_refuses_a_tile_that_differs_from_the_others(tmp_path, key):
    loss, acc = whole_grid()
    files = write_tiles(tmp_path, loss, acc, change={"a1_b1": {key: "other"}})
    with pytest.raises(ValueError, match=f"a1_b1.nc differs from the other tiles in {key}"):
        tiles.join(files, ALPHA, BETA, TILE, tmp_path / "s.zarr", EXPECTED)
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("key", list(EXPECTED))
def test_assembly_refuses_tiles_of_other_provenance(tmp_path, key):
    loss, acc = whole_grid()
    files = write_tiles(tmp_path, loss, acc)
    with pytest.raises(ValueError, match=f"was computed with {key}="):
        tiles.join(files, ALPHA, BETA, TILE, tmp_path / "s.zarr", {**EXPECTED, key: "something else"})
    assert not (tmp_path / "s.zarr").exists()


def test_assembly_refuses_a_tile_in_the_wrong_slot(tmp_path):
    loss, acc = whole_grid()
    files = write_tiles(tmp_path, loss, acc)
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    (swapped / "a0_b0.nc").write_bytes((tmp_path / "a1_b0.nc").read_bytes())
    others = [swapped / "a0_b0.nc"] + [f for f in files if f.stem != "a0_b0"]
    with pytest.raises(ValueError, match="a0_b0.nc has coordinates that do not match its slot"):
        tiles.join(others, ALPHA, BETA, TILE, tmp_path / "s.zarr", EXPECTED)
    shifted = tiles.tile_dataset(loss[:2, 3:], acc[:2, 3:], np.linspace(-1, 1, 5)[:2], np.array([2.5]), ATTRS)
    write_netcdf(shifted, swapped / "a0_b1.nc")
    others = [swapped / "a0_b1.nc"] + [f for f in files if f.stem != "a0_b1"]
    with pytest.raises(ValueError, match="a0_b1.nc has coordinates that do not match"):
        tiles.join(others, ALPHA, BETA, TILE, tmp_path / "s.zarr", EXPECTED)
    assert not (tmp_path / "s.zarr").exists()


def test_assembly_names_missing_tiles_and_keeps_the_old_store(tmp_path):
    loss, acc = whole_grid()
    files = write_tiles(tmp_path, loss, acc)
    tiles.join(files, ALPHA, BETA, TILE, tmp_path / "s.zarr", EXPECTED)
    with pytest.raises(ValueError, match="tiles missing for .*s.zarr: a0_b1, a2_b0"):
        tiles.join([f for f in files if f.stem not in ("a0_b1", "a2_b0")], ALPHA, BETA, TILE,
                         tmp_path / "s.zarr", EXPECTED)
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "s.zarr").loss.values, loss)


def test_pretext_tiles_have_no_accuracy_variable(tmp_path):
    loss, _ = whole_grid()
    files = write_tiles(tmp_path, loss, np.full_like(loss, np.nan))
    ds = tiles.join(files, ALPHA, BETA, TILE, tmp_path / "s.zarr", EXPECTED)
    assert list(ds.data_vars) == ["loss"]
    assert set(xr.open_zarr(tmp_path / "s.zarr").data_vars) == {"loss"}


def test_surface_variables_and_axes_describe_themselves(tmp_path):
    loss, acc = whole_grid()
    ds = tiles.join(write_tiles(tmp_path, loss, acc), ALPHA, BETA, TILE, tmp_path / "s.zarr", EXPECTED)
    saved = xr.open_zarr(tmp_path / "s.zarr")
    for got in (ds, saved):
        assert got.alpha.attrs == {"long_name": "step along direction x", "units": "1 (direction scale)"}
        assert got.beta.attrs == {"long_name": "step along direction y", "units": "1 (direction scale)"}
        assert got.loss.attrs == {"long_name": "pretext loss at theta + alpha dx + beta dy", "units": "1"}
        assert got.accuracy.attrs == {"long_name": "top-1 accuracy on the evaluation set", "units": "1 (fraction)"}
        assert got.attrs["tile"] == [2, 3] and got.attrs["objective"] == "pretext"


def test_result_files_are_written_whole_into_new_folders(tmp_path):
    loss, acc = whole_grid()
    files = write_tiles(tmp_path / "new" / "tiles", loss, acc)
    assert sorted(p.name for p in files[0].parent.iterdir()) == sorted(f.name for f in files)  # no temporaries
    out = tmp_path / "surfaces" / "s.zarr"
    out.parent.mkdir()
    (out.parent / ".s.zarr.tmp").mkdir()  # left over from a killed job
    tiles.join(files, ALPHA, BETA, TILE, out, EXPECTED)
    tiles.join(files, ALPHA, BETA, TILE, out, EXPECTED)  # replacing an existing store
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.zarr"]
    np.testing.assert_array_equal(xr.open_zarr(out).loss.values, loss)


def test_storage_formats(tmp_path):
    """Tiles are classic netCDF (what the scipy engine reads back); surfaces are Zarr v2 stores
    with consolidated metadata (one read to open them on a network file system)."""
    loss, acc = whole_grid()
    files = write_tiles(tmp_path, loss, acc)
    assert all(f.read_bytes()[:3] == b"CDF" for f in files)
    tiles.join(files, ALPHA, BETA, TILE, tmp_path / "s.zarr", EXPECTED)
    assert (tmp_path / "s.zarr/.zmetadata").is_file() and (tmp_path / "s.zarr/loss/.zarray").is_file()
