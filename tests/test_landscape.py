"""Landscape engine: tiles, assembly, invariances, and agreement with losses computed by hand."""
import argparse
import math

import numpy as np
import pytest
import torch
import xarray as xr

import reference
from conftest import model_settings
from vitlandscape.data import prepare
from vitlandscape.landscape import directions, grid, tiles
from vitlandscape.landscape import stages as landscape_stages
from vitlandscape.models.arch import build_mae
from vitlandscape.storage.outputs import sha256
from vitlandscape.train import stages as train_stages

ALPHA, BETA = [-1.0, 1.0, 5], [-0.5, 1.0, 7]  # non-square; both contain 0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An npz data set, an official-format MAE checkpoint, a probe checkpoint, directions."""
    root = tmp_path_factory.mktemp("landscape")
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    images = rng.integers(0, 256, size=(60, 16, 16, 3), dtype=np.uint8)
    np.savez(root / "data.npz", images=images, labels=labels)
    prepare.prepare_data({"dataset": "npz", "path": str(root / "data.npz"), "image_size": 16,
                          "eval_samples": 24, "seed": 0, "test_fraction": 0.25}, root / "data.pt")
    torch.manual_seed(0)
    cfg = model_settings("mae")
    mae = build_mae(cfg["arch"])
    torch.save({"model": mae.state_dict(), "args": argparse.Namespace(norm_pix_loss=False)}, root / "mae.pth")
    train_stages.downstream(cfg, "probe", root / "data.pt", root / "mae.pth", out=root / "probe.pt",
                            metrics_out=root / "probe.json")
    return root, cfg


def settings(cfg, objective, **landscape_overrides):
    ls = {"alpha": ALPHA, "beta": BETA, "tile": [5, 7], "direction_seed": 0, "mask_seed": 3,
          "normalization": "filter", "perturb_1d": False, "perturb_frozen": False, "orthogonal": False,
          "batch_size": 8, "device": "cpu", "precision": "fp32", "line": [-1.0, 1.0, 5], **landscape_overrides}
    return {**cfg, "objective": objective, "landscape": ls}


def checkpoint_for(root, objective):
    return root / ("mae.pth" if objective == "pretext" else "probe.pt")


def compute_surface(root, s, name):
    """Directions, every tile, assembly: the workflow's stages, called in-process."""
    ckpt = checkpoint_for(root, s["objective"])
    dirs = root / f"{name}.safetensors"
    landscape_stages.make_directions(s, ckpt, dirs)
    ls = s["landscape"]
    tile_files = []
    for tile in grid.tile_names(ls["alpha"], ls["beta"], ls["tile"]):
        tile_files.append(root / name / f"{tile}.nc")
        landscape_stages.surface_tile(s, root / "data.pt", ckpt, dirs, tile, tile_files[-1])
    tiles.assemble(s, tile_files, ckpt, dirs, root / f"{name}.zarr")
    return xr.open_zarr(root / f"{name}.zarr"), dirs, tile_files


def eval_set(root):
    prepared = prepare.load_prepared(root / "data.pt")
    index = prepared["eval_index"]
    return prepared["train_images"][index], prepared["train_labels"][index]


def weights(path) -> dict:
    """The state_dict stored in a checkpoint file, read without the library."""
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def reference_point(root, cfg, objective, state) -> tuple[float, float]:
    """(loss, accuracy) of `state` on the evaluation set by the float64 reference."""
    images, labels = eval_set(root)
    if objective == "pretext":
        noise = torch.rand(len(images), 16, generator=torch.Generator().manual_seed(3))  # mask_seed 3
        return reference.mae_loss(state, cfg["arch"], images, noise, cfg["mask_ratio"]), math.nan
    logits = reference.classifier_logits(state, cfg["arch"], images, head=objective)
    return reference.cross_entropy_and_accuracy(logits, labels)


def reference_grid(root, cfg, objective, dirs_path, alphas, betas):
    """Every grid point, one by one, by the reference: no tiles, no in-place perturbation."""
    state, (dirs, _) = weights(checkpoint_for(root, objective)), directions.load(dirs_path)
    loss, acc = np.empty((len(alphas), len(betas))), np.empty((len(alphas), len(betas)))
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            loss[i, j], acc[i, j] = reference_point(root, cfg, objective, reference.moved(state, dirs, a, b))
    return loss, acc


def test_tiling_invariance(setup):
    """Surfaces from any tiling equal the whole grid computed point by point in float64."""
    root, cfg = setup
    whole, dirs, _ = compute_surface(root, settings(cfg, "pretext", tile=[5, 7]), "whole")
    single, _, tile_files = compute_surface(root, settings(cfg, "pretext", tile=[1, 1]), "single")
    partial, _, _ = compute_surface(root, settings(cfg, "pretext", tile=[3, 4]), "partial")
    assert len(tile_files) == 35
    expected, _ = reference_grid(root, cfg, "pretext", dirs, grid.axis(ALPHA), grid.axis(BETA))
    for surf in (whole, single, partial):
        np.testing.assert_allclose(surf.loss.values, expected, rtol=2e-5, atol=0)
    np.testing.assert_allclose(single.loss.values, whole.loss.values, rtol=0, atol=1e-6)
    assert partial.loss.encoding["chunks"] == (3, 4)
    assert expected.std() > 0.01 * expected.mean()


def test_surface_contract_and_reference_points(setup):
    """Centre = loss of the unperturbed model; (a, b) = loss of theta + a dx + b dy, both by the reference."""
    root, cfg = setup
    surf, dirs_path, _ = compute_surface(root, settings(cfg, "pretext"), "contract")
    assert surf.loss.dims == ("alpha", "beta") and surf.loss.shape == (5, 7)
    np.testing.assert_array_equal(surf.alpha.values, np.linspace(-1, 1, 5))
    np.testing.assert_array_equal(surf.beta.values, np.linspace(-0.5, 1, 7))
    for key in ("model", "method", "objective", "checkpoint_sha256", "directions_sha256", "eval_samples",
                "mask_seed", "mask_ratio", "config_hash", "versions"):
        assert key in surf.attrs, key
    assert surf.attrs["eval_samples"] == 24 and surf.attrs["mask_seed"] == 3
    dirs_count = len(directions.load(dirs_path)[0]["x"])
    assert {k: surf.attrs[k] for k in ("model", "method", "objective", "checkpoint", "mask_ratio", "normalization",
                                        "perturb_1d", "perturb_frozen", "orthogonal", "direction_seed",
                                        "perturbed_tensors")} == {
        "model": "m", "method": "mae", "objective": "pretext", "checkpoint": str(root / "mae.pth"), "mask_ratio": 0.75,
        "normalization": "filter", "perturb_1d": 0, "perturb_frozen": 0, "orthogonal": 0, "direction_seed": 0,
        "perturbed_tensors": dirs_count}
    assert surf.attrs["checkpoint_format"] == "mae_pretrain"  # an official-layout file
    assert dirs_count > 10

    state, (dirs, _) = weights(root / "mae.pth"), directions.load(dirs_path)
    centre, _ = reference_point(root, cfg, "pretext", state)
    assert math.isclose(surf.loss.sel(alpha=0.0, beta=0.0).item(), centre, rel_tol=1e-6)
    a, b = surf.alpha.values[3], surf.beta.values[5]
    moved, _ = reference_point(root, cfg, "pretext", reference.moved(state, dirs, a, b))
    assert math.isclose(surf.loss.values[3, 5], moved, rel_tol=1e-5)
    assert not math.isclose(moved, centre, rel_tol=1e-3)


def test_batch_size_invariance(setup):
    root, cfg = setup
    small, _, _ = compute_surface(root, settings(cfg, "pretext", batch_size=5), "bs5")
    large, _, _ = compute_surface(root, settings(cfg, "pretext", batch_size=24), "bs24")
    np.testing.assert_allclose(small.loss.values, large.loss.values, rtol=1e-5)


def test_probe_surface_matches_the_reference(setup):
    root, cfg = setup
    surf, dirs, _ = compute_surface(root, settings(cfg, "probe"), "probe")
    assert set(surf.data_vars) == {"loss", "accuracy"}
    assert surf.attrs["mask_ratio"] == "n/a" and surf.attrs["mask_seed"] == "n/a"
    assert surf.attrs["checkpoint_format"] == "vitlandscape"
    loss, acc = reference_grid(root, cfg, "probe", dirs, surf.alpha.values, surf.beta.values)
    np.testing.assert_allclose(surf.loss.values, loss, rtol=2e-5)
    centre = surf.sel(alpha=0.0, beta=0.0)
    # (alpha, beta) = (0, 0): a count / 24 on both sides, equal unless float32 vs float64 logits
    # (~3e-7 apart) flip an image whose top two reference logits lie within 1e-4 (300x that)
    images, _ = eval_set(root)
    top2 = reference.classifier_logits(weights(root / "probe.pt"), cfg["arch"], images, "probe").topk(2).values
    near_ties = int((top2[:, 0] - top2[:, 1] < 1e-4).sum())
    assert abs(centre.accuracy.item() - acc[2, 2]) <= near_ties / 24 + 1e-12
    assert np.mean(surf.accuracy.values == acc) > 0.9  # float32 vs float64 may flip a near tie
    assert len(np.unique(surf.accuracy.values)) > 1


def test_assembly_refuses_mixed_provenance(setup):
    root, cfg = setup
    s = settings(cfg, "pretext", tile=[3, 4])
    surf, dirs, tile_files = compute_surface(root, s, "mixed")
    other = settings(cfg, "pretext", tile=[3, 4], direction_seed=9)
    other_dirs = root / "other.safetensors"
    landscape_stages.make_directions(other, root / "mae.pth", other_dirs)
    landscape_stages.surface_tile(other, root / "data.pt", root / "mae.pth", other_dirs, "a1_b0", tile_files[2])
    with pytest.raises(ValueError, match=r"tile .*a1_b0.nc was computed with directions_sha256"):
        tiles.assemble(s, tile_files, root / "mae.pth", dirs, root / "mixed2.zarr")
    assert not (root / "mixed2.zarr").exists()
    with pytest.raises(ValueError, match="tiles missing .*a1_b1"):
        tiles.assemble(s, tile_files[:3], root / "mae.pth", dirs, root / "mixed3.zarr")
    regrid = settings(cfg, "pretext", tile=[3, 4], alpha=[-2.0, 2.0, 5])
    with pytest.raises(ValueError, match="was computed with grid="):
        tiles.assemble(regrid, tile_files, root / "mae.pth", dirs, root / "mixed4.zarr")


def test_directions_for_another_checkpoint_are_refused(setup):
    root, cfg = setup
    s = settings(cfg, "pretext")
    dirs = root / "for_probe.safetensors"
    landscape_stages.make_directions(settings(cfg, "probe"), root / "probe.pt", dirs)
    with pytest.raises(ValueError, match="were made for checkpoint sha256"):
        landscape_stages.surface_tile(s, root / "data.pt", root / "mae.pth", dirs, "a0_b0", root / "x.nc")


def test_diverged_points_are_kept_as_data(setup):
    root, cfg = setup
    s = settings(cfg, "pretext", alpha=[0.0, 1e36, 2], beta=[0.0, 0.0, 1], tile=[2, 1])
    surf, _, _ = compute_surface(root, s, "diverged")
    values = surf.loss.values[:, 0]
    assert np.isfinite(values[0]) and not np.isfinite(values[1])


def test_line_and_interpolation(setup):
    root, cfg = setup
    s = settings(cfg, "pretext", alpha=[-1.0, 1.0, 5], beta=[0.0, 0.0, 1], tile=[5, 1])
    surf, dirs, _ = compute_surface(root, s, "for_line")
    line = landscape_stages.line(s, root / "data.pt", root / "mae.pth", dirs, root / "line.nc")
    np.testing.assert_allclose(line.loss.values, surf.loss.values[:, 0], rtol=1e-6)
    saved = xr.open_dataset(root / "line.nc", engine="scipy")
    assert list(saved.data_vars) == ["loss"] and saved.loss.dims == ("alpha",)
    np.testing.assert_array_equal(saved.alpha.values, np.linspace(-1, 1, 5))
    assert saved.attrs["grid"] == "line=[-1.0, 1.0, 5]" and saved.attrs["config_hash"] == surf.attrs["config_hash"]
    assert saved.attrs["directions_sha256"] == surf.attrs["directions_sha256"]
    # the pretext sanity check takes the loss at the trained weights from the line itself
    assert saved.attrs["centre_loss"] == saved.loss.sel(alpha=0.0).item() == surf.loss.sel(alpha=0.0, beta=0.0).item()
    assert saved.attrs["zero_prediction_loss"] > 0

    torch.manual_seed(5)
    torch.save({"model": build_mae(cfg["arch"]).state_dict()}, root / "other.pth")
    spec = {**settings(cfg, "pretext"), "interpolation": "a_to_b", "end_model": "b", "range": [0.0, 1.0, 3]}
    path = landscape_stages.interpolate(spec, root / "data.pt", root / "mae.pth", root / "other.pth", root / "i.nc")
    saved = xr.open_dataset(root / "i.nc", engine="scipy")
    assert list(saved.data_vars) == ["loss"] and saved.loss.dims == ("t",)
    np.testing.assert_array_equal(saved.t.values, [0.0, 0.5, 1.0])
    assert {k: saved.attrs[k] for k in ("name", "objective", "start_model", "end_model", "start", "end",
                                         "start_sha256", "end_sha256", "eval_samples")} == {
        "name": "a_to_b", "objective": "pretext", "start_model": "m", "end_model": "b",
        "start": str(root / "mae.pth"), "end": str(root / "other.pth"),
        "start_sha256": sha256(root / "mae.pth"), "end_sha256": sha256(root / "other.pth"),
        "eval_samples": 24}
    assert saved.attrs["versions"].startswith("vitlandscape ")
    for t, ckpt in ((0.0, "mae.pth"), (1.0, "other.pth")):
        expected, _ = reference_point(root, cfg, "pretext", weights(root / ckpt))
        assert math.isclose(path.loss.sel(t=t).item(), expected, rel_tol=1e-5)
    midway = {k: (v + weights(root / "other.pth")[k]) / 2 for k, v in weights(root / "mae.pth").items()}
    expected, _ = reference_point(root, cfg, "pretext", midway)
    assert math.isclose(path.loss.sel(t=0.5).item(), expected, rel_tol=1e-5)


def _rewrite_attr(files, key, value):
    for path in files:
        with xr.open_dataset(path, engine="scipy") as ds:
            ds = ds.load()
        ds.attrs[key] = value
        ds.to_netcdf(path, engine="scipy")


@pytest.mark.parametrize("key", ["checkpoint_sha256", "directions_sha256", "grid", "config_hash"])
def test_assembly_checks_tiles_against_this_surfaces_inputs(setup, key):
    """Tiles that agree with each other but not with this checkpoint, directions, grid or config."""
    root, cfg = setup
    s = settings(cfg, "pretext", tile=[3, 4])
    _, dirs, tile_files = compute_surface(root, s, f"stale_{key}")
    _rewrite_attr(tile_files, key, "stale")
    with pytest.raises(ValueError, match=f"was computed with {key}='stale'"):
        tiles.assemble(s, tile_files, root / "mae.pth", dirs, root / f"stale_{key}2.zarr")
    assert not (root / f"stale_{key}2.zarr").exists()


RESULT_SETTINGS = [("landscape", "mask_seed", 4), ("landscape", "direction_seed", 1),
                   ("landscape", "normalization", "layer"), ("landscape", "perturb_1d", True),
                   ("landscape", "perturb_frozen", True), ("landscape", "orthogonal", True),
                   ("landscape", "alpha", [-2.0, 1.0, 5]), ("landscape", "beta", [-0.5, 1.0, 9]),
                   ("landscape", "tile", [1, 1]), (None, "mask_ratio", 0.5), (None, "norm_pix_loss", True),
                   (None, "objective", "probe"), (None, "name", "other"), (None, "downstream_weights", "student")]


@pytest.mark.parametrize("section,key,value", RESULT_SETTINGS)
def test_config_hash_changes_with_every_result_setting(setup, section, key, value):
    _, cfg = setup
    base = settings(cfg, "pretext")
    changed = settings(cfg, "pretext")
    (changed["landscape"] if section else changed)[key] = value
    assert tiles.config_hash(changed) != tiles.config_hash(base)


def test_config_hash_ignores_how_a_surface_is_computed(setup):
    _, cfg = setup
    base = tiles.config_hash(settings(cfg, "pretext"))
    assert tiles.config_hash(settings(cfg, "pretext", batch_size=1, device="cuda")) == base


def test_probe_line_has_accuracy(setup, capsys):
    root, cfg = setup
    s = settings(cfg, "probe", alpha=[-1.0, 1.0, 3], beta=[0.0, 0.0, 1], tile=[3, 1], line=[-1.0, 1.0, 3])
    surf, dirs, _ = compute_surface(root, s, "probe_line")
    line = landscape_stages.line(s, root / "data.pt", root / "probe.pt", dirs, root / "probe_line.nc")
    saved = xr.open_dataset(root / "probe_line.nc", engine="scipy")
    assert set(saved.data_vars) == {"loss", "accuracy"}
    np.testing.assert_array_equal(saved.accuracy.values, surf.accuracy.values[:, 0])
    np.testing.assert_allclose(line.loss.values, surf.loss.values[:, 0], rtol=1e-6)
    values = line.loss.values
    assert f"probe_line.nc: 3 points, loss {values.min():.4f} .. {values.max():.4f}" in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("objective", ["pretext", "probe"])
def test_surface_is_the_same_on_cpu_and_cuda(setup, objective):
    """The README's claim that a surface does not depend on the device (fixed CPU-drawn masks)."""
    root, cfg = setup
    cpu, _, _ = compute_surface(root, settings(cfg, objective, tile=[3, 4]), f"cpu_{objective}")
    gpu, _, _ = compute_surface(root, settings(cfg, objective, tile=[3, 4], device="cuda"), f"cuda_{objective}")
    assert gpu.attrs["config_hash"] == cpu.attrs["config_hash"]
    np.testing.assert_allclose(gpu.loss.values, cpu.loss.values, rtol=1e-4)
    if objective == "probe":
        assert np.mean(gpu.accuracy.values == cpu.accuracy.values) > 0.9


def test_assembly_log_reports_the_centre_of_a_grid_without_zero(setup, capsys):
    """The job log names the loss nearest the trained weights and the range."""
    root, cfg = setup
    s = settings(cfg, "pretext", alpha=[-0.9, 1.1, 3], beta=[-1.2, 0.8, 3], tile=[2, 2])  # (0.1, -0.2) is nearest
    surf, _, _ = compute_surface(root, s, "offgrid")
    log = capsys.readouterr().out
    centre = surf.loss.values[1, 1]
    values = surf.loss.values
    assert f"(3, 3) grid, centre loss {centre:.4f}, range {values.min():.4f} .. {values.max():.4f}" in log


@pytest.mark.parametrize("option,expect", [("perturb_1d", "norm.weight"), ("perturb_frozen", "pos_embed")])
def test_direction_settings_reach_the_direction_file(setup, option, expect):
    root, cfg = setup
    s = settings(cfg, "pretext", **{option: True})
    landscape_stages.make_directions(s, root / "mae.pth", root / f"{option}.safetensors")
    dirs, meta = directions.load(root / f"{option}.safetensors")
    assert expect in dirs["x"] and expect in dirs["y"]
    default, _ = directions.load(compute_surface(root, settings(cfg, "pretext"), f"no_{option}")[1])
    assert expect not in default["x"] and set(default["x"]) < set(dirs["x"])
    assert meta[option] == "True" and meta["orthogonal"] == "False"


def test_direction_file_records_its_settings_and_log_line(setup, capsys):
    root, cfg = setup
    s = settings(cfg, "pretext", orthogonal=True, normalization="layer", direction_seed=7)
    landscape_stages.make_directions(s, root / "mae.pth", root / "orth.safetensors")
    dirs, meta = directions.load(root / "orth.safetensors")
    assert meta == {"model": "m", "objective": "pretext", "checkpoint_sha256": sha256(root / "mae.pth"),
                    "seed": "7", "normalization": "layer", "perturb_1d": "False", "perturb_frozen": "False",
                    "orthogonal": "True"}
    x = torch.cat([dirs["x"][n].flatten() for n in sorted(dirs["x"])]).double()
    y = torch.cat([dirs["y"][n].flatten() for n in sorted(dirs["x"])]).double()
    assert abs(float(x @ y)) < 1e-6 * float(x.norm() * y.norm())
    weights_count = sum(t.numel() for t in dirs["x"].values())
    assert f"{len(dirs['x'])} perturbed tensors, {weights_count} weights -> " in capsys.readouterr().out


def test_config_hash_does_not_depend_on_key_order(setup):
    _, cfg = setup
    s = settings(cfg, "pretext")
    reordered = {k: s[k] for k in reversed(list(s))}
    reordered["landscape"] = {k: s["landscape"][k] for k in reversed(list(s["landscape"]))}
    digest = tiles.config_hash(s)
    assert tiles.config_hash(reordered) == digest
    assert len(digest) == 16 and set(digest) <= set("0123456789abcdef")


def test_tiles_name_their_tile_and_log_their_range(setup, capsys):
    root, cfg = setup
    s = settings(cfg, "pretext", tile=[3, 4])
    _, _, tile_files = compute_surface(root, s, "named_tiles")
    log = capsys.readouterr().out
    for path in tile_files:
        with xr.open_dataset(path, engine="scipy") as ds:
            assert ds.attrs["tile_name"] == path.stem
            size, low, high = ds.loss.size, float(ds.loss.min()), float(ds.loss.max())
        assert f"tile {path.stem}: {size} points, loss {low:.4f} .. {high:.4f} -> {path}" in log


@pytest.mark.parametrize("objective", ["pretext", "probe"])
def test_bf16_surface_against_fp32(setup, objective, capsys):
    """bf16 autocast moves the surface by well under 1 % of the loss here (the numbers printed
    are those README's precision section quotes) but does move it; tf32 on a CPU is fp32."""
    root, cfg = setup
    fp32, _, _ = compute_surface(root, settings(cfg, objective), f"fp32_{objective}")
    tf32, _, _ = compute_surface(root, settings(cfg, objective, precision="tf32"), f"tf32_{objective}")
    bf16, _, _ = compute_surface(root, settings(cfg, objective, precision="bf16"), f"bf16_{objective}")
    np.testing.assert_array_equal(tf32.loss.values, fp32.loss.values)
    relative = np.abs(bf16.loss.values - fp32.loss.values) / np.abs(fp32.loss.values)
    with capsys.disabled():
        print(f"\nbf16 vs fp32 {objective} surface: max relative difference {relative.max():.2e}, "
              f"mean {relative.mean():.2e}")
    assert 0 < relative.mean() and relative.max() < 0.01
    assert bf16.attrs["precision"] == "bf16" and fp32.attrs["precision"] == "fp32"
