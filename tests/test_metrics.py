"""Metric stages: the Hessian stage against a dense float64 Hessian of the reference pretext
loss on the contract's evaluation set and masks; the metrics tables from surfaces on disk."""
import argparse
import json

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import reference
from conftest import model_settings, prepared_noise
from vitlandscape.metrics import stages as metrics_stages
from vitlandscape.metrics import tables
from vitlandscape.models.arch import build_mae

MICRO = {"img_size": 8, "patch_size": 4, "embed_dim": 8, "depth": 1, "num_heads": 2,
         "decoder_embed_dim": 8, "decoder_depth": 1, "decoder_num_heads": 2}
HESSIAN = {"enabled": True, "top_k": 2, "lanczos_steps": 60, "tolerance": None, "trace_probes": 40,
           "density_runs": 2, "density_steps": 12, "seed": 0, "batch_size": 4}
FIXED = ("pos_embed", "decoder_pos_embed")  # sin-cos, not trained


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    prepared_noise(root, images=20, size=8, classes=2, eval_samples=6)
    torch.manual_seed(0)
    torch.save({"model": build_mae(MICRO).state_dict(), "args": argparse.Namespace(norm_pix_loss=False)},
               root / "mae.pth")
    settings = {**model_settings("mae", arch=MICRO, mask_ratio=0.5), "objective": "pretext",
                "landscape": {"mask_seed": 5, "batch_size": 256, "device": "cpu"}, "metrics": {"hessian": HESSIAN}}
    return root, settings


def reference_hessian(root, settings, checkpoint=None):
    """(loss, dense Hessian) of the float64 reference pretext loss over the trainable weights,
    on the eval images (the prepared split at the eval index, in that order) and the contract's
    masks: row i of torch.rand(N, L) under manual_seed(mask_seed)."""
    prepared = torch.load(root / "data.pt", weights_only=False)
    images = prepared["train_images"][prepared["eval_index"]].double()
    noise = torch.rand(len(images), 4, generator=torch.Generator().manual_seed(settings["landscape"]["mask_seed"]))
    state = reference.f64(torch.load(checkpoint or root / "mae.pth", weights_only=False)["model"])
    names = [k for k in state if k not in FIXED]
    flat = torch.cat([state[k].reshape(-1) for k in names])

    def loss(vector):
        moved, start = dict(state), 0
        for k in names:
            moved[k] = vector[start:start + state[k].numel()].view(state[k].shape)
            start += state[k].numel()
        return reference.mae_forward(moved, MICRO, images, noise, 0.5)[0]

    return loss(flat).item(), torch.autograd.functional.hessian(loss, flat).numpy()


def test_hessian_stage_matches_the_dense_reference_hessian(micro, tmp_path):
    root, settings = micro
    metrics_stages.hessian_metrics(settings, root / "data.pt", root / "mae.pth", tmp_path / "hessian.json")
    written = json.loads((tmp_path / "hessian.json").read_text())
    centre, dense = reference_hessian(root, settings)
    exact = np.linalg.eigvalsh(dense)
    assert written["parameters"] == dense.shape[0]
    assert written["centre_loss"] == pytest.approx(centre, rel=1e-5)
    np.testing.assert_allclose(written["top_eigenvalues"], exact[::-1][:2], rtol=1e-3)
    assert written["min_eigenvalue"] == pytest.approx(exact[0], rel=1e-3, abs=1e-3 * exact[-1])
    assert written["ratio_min_max"] == pytest.approx(abs(exact[0] / exact[-1]), rel=1e-2, abs=1e-4)
    trace = written["trace"]
    assert abs(trace["value"] - np.trace(dense)) < 4 * trace["stderr"] and trace["probes"] == 40
    density = written["density"]
    assert sum(density["weights"]) == pytest.approx(1.0, abs=1e-9)
    # the density's mean is the trace per parameter (up to the Rademacher estimate's noise)
    mean = np.dot(density["weights"], density["nodes"])
    assert mean == pytest.approx(np.trace(dense) / dense.shape[0], rel=0.5)
    products = written["lanczos"]["products"] + trace["products"] + density["products"]
    assert written["products"] == products == written["lanczos"]["steps"] + 3 + 40 + 2 * 12
    assert written["checkpoint_format"] == "mae_pretrain" and written["eval_samples"] == 6
    again = metrics_stages.hessian_metrics(settings, root / "data.pt", root / "mae.pth", tmp_path / "again.json")
    assert again["top_eigenvalues"] == written["top_eigenvalues"] and again["trace"]["value"] == trace["value"]


def surface(model, objective, loss, method="mae"):
    axis = np.linspace(-1, 1, 41)
    return xr.Dataset({"loss": (("alpha", "beta"), loss(*np.meshgrid(axis, axis, indexing="ij")))},
                      coords={"alpha": axis, "beta": axis},
                      attrs={"model": model, "method": method, "objective": objective, "eval_samples": 16})


METRICS = {"relative_rises": [0.5], "absolute_rises": [0.25], "sharpness_rho": [0.5],
           "claims": [{"name": "wide", "claim": "the flat bowl is wider", "wider": "flat/pretext",
                       "than": "steep/supervised", "measures": ["basin_radius_r0.5", "convex_area"]}]}


def test_tables_from_surfaces(tmp_path):
    """Bowls 1 + c (a^2 + b^2): the basin at 1.5 has radius sqrt(0.5 / c); the steep bowl's is
    smaller, so the claim holds for the basin; both bowls are convex up to the grid's edge,
    so the convex-region comparison is undecided."""
    paths = []
    for model, objective, c in (("flat", "pretext", 1.0), ("steep", "supervised", 4.0)):
        paths.append(tmp_path / f"{model}.zarr")
        surface(model, objective, lambda a, b, c=c: 1 + c * (a ** 2 + b ** 2),
                "supervised" if model == "steep" else "mae").to_zarr(paths[-1])
    tables.tables(METRICS, paths, [], [], tmp_path / "metrics")
    flat = json.loads((tmp_path / "metrics/flat/pretext.json").read_text())
    assert flat["hessian"] is None and flat["flatness"] is None and flat["centre_loss"] == 1.0
    assert flat["surface"]["relative_basins"][0]["mean_radius"] == pytest.approx(np.sqrt(0.5), rel=0.03)
    summary = pd.read_csv(tmp_path / "metrics/summary.csv").set_index("model")
    assert summary.loc["steep", "basin_radius_r0.5"] == pytest.approx(np.sqrt(0.5 / 4), rel=0.05)
    assert summary.loc["steep", "sharpness_mean_rho0.5"] == pytest.approx(4 * 0.25, rel=1e-2)
    found = pd.read_csv(tmp_path / "metrics/findings.csv").set_index("measure")
    assert found.loc["basin_radius_r0.5", "verdict"] == "holds"
    assert found.loc["convex_area", "verdict"] == "undecided"
    with pytest.raises(ValueError, match="2 surfaces but 1 hessian files"):
        tables.tables(METRICS, paths, [tmp_path / "x.json"], [], tmp_path / "metrics")


def test_ratio_map_measures_the_hessian_at_the_moved_weights(micro, tmp_path):
    """At theta + 0.5 dx the map's lambda_max, lambda_min and ratio are those of the dense
    reference Hessian of the weights moved there by hand."""
    from vitlandscape.landscape import directions
    from vitlandscape.landscape import stages as landscape_stages
    root, settings = micro
    ls = {**settings["landscape"], "direction_seed": 0, "normalization": "filter", "perturb_1d": False,
          "perturb_frozen": False, "orthogonal": False}
    moved_settings = {**settings, "landscape": ls, "metrics": {
        "hessian": HESSIAN, "ratio_map": {"alpha": [0.5, 0.5, 1], "beta": [0.0, 0.0, 1], "lanczos_steps": 80,
                                          "tolerance": None}}}
    landscape_stages.make_directions(moved_settings, root / "mae.pth", tmp_path / "dirs.safetensors")
    found = metrics_stages.ratio_map(moved_settings, root / "data.pt", root / "mae.pth", tmp_path / "dirs.safetensors",
                                     tmp_path / "map.nc")
    dirs, _ = directions.load(tmp_path / "dirs.safetensors")
    state = torch.load(root / "mae.pth", weights_only=False)["model"]
    torch.save({"model": reference.moved(state, dirs, 0.5, 0.0), "args": argparse.Namespace(norm_pix_loss=False)},
               tmp_path / "moved.pth")
    _, dense = reference_hessian(root, settings, checkpoint=tmp_path / "moved.pth")
    exact = np.linalg.eigvalsh(dense)
    assert found.lambda_max.item() == pytest.approx(exact[-1], rel=1e-3)
    assert found.lambda_min.item() == pytest.approx(exact[0], rel=1e-3, abs=1e-3 * exact[-1])
    assert found.ratio.item() == pytest.approx(abs(exact[0] / exact[-1]), rel=1e-2, abs=1e-4)
    assert found.attrs["normalization"] == "filter"
    torch.save({"model": state, "args": argparse.Namespace(norm_pix_loss=False)}, tmp_path / "copy.pth")
    (tmp_path / "copy.pth").write_bytes((tmp_path / "copy.pth").read_bytes() + b"\0")  # same weights, other file
    with pytest.raises(ValueError, match="dirs.safetensors were made for checkpoint sha256"):
        metrics_stages.ratio_map(moved_settings, root / "data.pt", tmp_path / "copy.pth", tmp_path / "dirs.safetensors",
                                 tmp_path / "map2.nc")
