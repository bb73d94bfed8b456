"""Landscape engine: tiles, assembly, invariances, and agreement with losses computed by hand."""
import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr

from vitlandscape import data, directions, grid, landscape, objectives, stages
from vitlandscape.models.arch import build_mae
from conftest import model_settings

ALPHA, BETA = [-1.0, 1.0, 5], [-0.5, 1.0, 7]  # non-square; both contain 0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An npz data set, an official-format MAE checkpoint, a probe checkpoint, directions."""
    root = tmp_path_factory.mktemp("landscape")
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    images = rng.integers(0, 256, size=(60, 16, 16, 3), dtype=np.uint8)
    np.savez(root / "data.npz", images=images, labels=labels)
    stages.prepare_data({"dataset": "npz", "path": str(root / "data.npz"), "image_size": 16,
                         "eval_samples": 24, "seed": 0, "test_fraction": 0.25}, root / "data.pt")
    torch.manual_seed(0)
    cfg = model_settings("mae")
    mae = build_mae(cfg["arch"])
    torch.save({"model": mae.state_dict(), "args": argparse.Namespace(norm_pix_loss=False)}, root / "mae.pth")
    stages.downstream(cfg, "probe", root / "data.pt", root / "mae.pth", root / "probe.pt", root / "probe.json")
    return root, cfg


def settings(cfg, objective, **landscape_overrides):
    ls = {"alpha": ALPHA, "beta": BETA, "tile": [5, 7], "direction_seed": 0, "mask_seed": 3,
          "normalization": "filter", "perturb_1d": False, "perturb_frozen": False, "orthogonal": False,
          "batch_size": 8, "device": "cpu", "line": [-1.0, 1.0, 5], **landscape_overrides}
    return {**cfg, "objective": objective, "landscape": ls}


def checkpoint_for(root, objective):
    return root / ("mae.pth" if objective == "pretext" else "probe.pt")


def compute_surface(root, s, name):
    """Directions, every tile, assembly: the workflow's stages, called in-process."""
    ckpt = checkpoint_for(root, s["objective"])
    dirs = root / f"{name}.safetensors"
    landscape.make_directions(s, ckpt, dirs)
    ls = s["landscape"]
    tiles = []
    for tile in grid.tile_names(ls["alpha"], ls["beta"], ls["tile"]):
        tiles.append(root / name / f"{tile}.nc")
        landscape.surface_tile(s, root / "data.pt", ckpt, dirs, tile, tiles[-1])
    landscape.assemble(s, tiles, ckpt, dirs, root / f"{name}.zarr")
    return xr.open_zarr(root / f"{name}.zarr"), dirs, tiles


def pretext_loss_by_hand(model, images, noise, mask_ratio):
    """The official MAE loss with the contract's masks, written out step by step."""
    keep = int(noise.shape[1] * (1 - mask_ratio))
    mask = torch.ones_like(noise)
    for i in range(len(noise)):
        mask[i, torch.argsort(noise[i])[:keep]] = 0
    with torch.no_grad():
        _, pred, model_mask = model(images, mask_ratio, noise)
    assert torch.equal(model_mask, mask)
    target = model.patchify(images)
    per_patch = ((pred.double() - target.double()) ** 2).mean(-1)
    return float((per_patch * mask).sum() / mask.sum())


def test_tiling_invariance(setup):
    root, cfg = setup
    whole, _, _ = compute_surface(root, settings(cfg, "pretext", tile=[5, 7]), "whole")
    single, _, tiles = compute_surface(root, settings(cfg, "pretext", tile=[1, 1]), "single")
    partial, _, _ = compute_surface(root, settings(cfg, "pretext", tile=[3, 4]), "partial")
    assert len(tiles) == 35
    np.testing.assert_allclose(single.loss.values, whole.loss.values, rtol=0, atol=1e-6)
    np.testing.assert_allclose(partial.loss.values, whole.loss.values, rtol=0, atol=1e-6)
    assert partial.loss.encoding["chunks"] == (3, 4)
    assert np.isfinite(whole.loss.values).all() and whole.loss.values.std() > 0


def test_surface_contract_and_hand_computed_points(setup):
    """Centre = loss of the unperturbed model; (a, b) = loss after moving the weights by hand."""
    root, cfg = setup
    surf, dirs_path, _ = compute_surface(root, settings(cfg, "pretext"), "contract")
    assert surf.loss.dims == ("alpha", "beta") and surf.loss.shape == (5, 7)
    np.testing.assert_array_equal(surf.alpha.values, np.linspace(-1, 1, 5))
    np.testing.assert_array_equal(surf.beta.values, np.linspace(-0.5, 1, 7))
    for key in ("model", "method", "objective", "checkpoint_sha256", "directions_sha256", "eval_samples",
                "mask_seed", "mask_ratio", "config_hash", "versions"):
        assert key in surf.attrs, key
    assert surf.attrs["eval_samples"] == 24 and surf.attrs["mask_seed"] == 3

    prepared = data.load_prepared(root / "data.pt")
    images = prepared["train_images"][prepared["eval_index"]]
    noise = torch.rand(24, 16, generator=torch.Generator().manual_seed(3))
    model = objectives.load_mae(root / "mae.pth", cfg).eval()
    centre = pretext_loss_by_hand(model, images, noise, 0.75)
    assert math.isclose(surf.loss.sel(alpha=0.0, beta=0.0).item(), centre, rel_tol=1e-6)

    dirs, _ = directions.load(dirs_path)
    a, b = surf.alpha.values[3], surf.beta.values[5]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name in dirs["x"]:
        state[name] = state[name] + a * dirs["x"][name] + b * dirs["y"][name]
    moved = build_mae(cfg["arch"]).eval()
    moved.load_state_dict(state)
    by_hand = pretext_loss_by_hand(moved, images, noise, 0.75)
    assert math.isclose(surf.loss.values[3, 5], by_hand, rel_tol=1e-5)
    assert not math.isclose(by_hand, centre, rel_tol=1e-3)


def test_batch_size_invariance(setup):
    root, cfg = setup
    small, _, _ = compute_surface(root, settings(cfg, "pretext", batch_size=5), "bs5")
    large, _, _ = compute_surface(root, settings(cfg, "pretext", batch_size=24), "bs24")
    np.testing.assert_allclose(small.loss.values, large.loss.values, rtol=1e-5)


def test_probe_surface_has_loss_and_accuracy(setup):
    root, cfg = setup
    surf, _, _ = compute_surface(root, settings(cfg, "probe"), "probe")
    assert set(surf.data_vars) == {"loss", "accuracy"}
    assert surf.attrs["mask_ratio"] == "n/a"
    model = objectives.load_model("probe", root / "probe.pt", cfg)
    prepared = data.load_prepared(root / "data.pt")
    idx = prepared["eval_index"]
    with torch.no_grad():
        logits = model(prepared["train_images"][idx])
    labels = prepared["train_labels"][idx]
    centre = surf.sel(alpha=0.0, beta=0.0)
    assert math.isclose(centre.loss.item(), F.cross_entropy(logits, labels).item(), rel_tol=1e-5)
    assert centre.accuracy.item() == (logits.argmax(-1) == labels).sum().item() / len(labels)


def test_assembly_refuses_mixed_provenance(setup):
    root, cfg = setup
    s = settings(cfg, "pretext", tile=[3, 4])
    surf, dirs, tiles = compute_surface(root, s, "mixed")
    other = settings(cfg, "pretext", tile=[3, 4], direction_seed=9)
    other_dirs = root / "other.safetensors"
    landscape.make_directions(other, root / "mae.pth", other_dirs)
    landscape.surface_tile(other, root / "data.pt", root / "mae.pth", other_dirs, "a1_b0", tiles[2])
    with pytest.raises(ValueError, match=r"tile .*a1_b0.nc was computed with directions_sha256"):
        landscape.assemble(s, tiles, root / "mae.pth", dirs, root / "mixed2.zarr")
    assert not (root / "mixed2.zarr").exists()
    with pytest.raises(ValueError, match="tiles missing .*a1_b1"):
        landscape.assemble(s, tiles[:3], root / "mae.pth", dirs, root / "mixed3.zarr")
    regrid = settings(cfg, "pretext", tile=[3, 4], alpha=[-2.0, 2.0, 5])
    with pytest.raises(ValueError, match="was computed with grid="):
        landscape.assemble(regrid, tiles, root / "mae.pth", dirs, root / "mixed4.zarr")


def test_directions_for_another_checkpoint_are_refused(setup):
    root, cfg = setup
    s = settings(cfg, "pretext")
    dirs = root / "for_probe.safetensors"
    landscape.make_directions(settings(cfg, "probe"), root / "probe.pt", dirs)
    with pytest.raises(ValueError, match="were made for checkpoint sha256"):
        landscape.surface_tile(s, root / "data.pt", root / "mae.pth", dirs, "a0_b0", root / "x.nc")


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
    line = landscape.line(s, root / "data.pt", root / "mae.pth", dirs, root / "line.nc")
    np.testing.assert_allclose(line.loss.values, surf.loss.values[:, 0], rtol=1e-6)

    torch.manual_seed(5)
    torch.save({"model": build_mae(cfg["arch"]).state_dict()}, root / "other.pth")
    spec = {**settings(cfg, "pretext"), "interpolation": "a_to_b", "range": [0.0, 1.0, 3]}
    path = landscape.interpolate(spec, root / "data.pt", root / "mae.pth", root / "other.pth", root / "i.nc")
    prepared = data.load_prepared(root / "data.pt")
    images = prepared["train_images"][prepared["eval_index"]]
    noise = torch.rand(24, 16, generator=torch.Generator().manual_seed(3))
    for t, ckpt in ((0.0, "mae.pth"), (1.0, "other.pth")):
        expected = pretext_loss_by_hand(objectives.load_mae(root / ckpt, cfg).eval(), images, noise, 0.75)
        assert math.isclose(path.loss.sel(t=t).item(), expected, rel_tol=1e-5)
