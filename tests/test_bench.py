"""`vitlandscape bench`: one grid by the engine, loss-landscapes and a Li et al. loop, checked
against each other before any ratio is reported; the JSON's rates and ratios; the rule."""
import argparse
import json
import math
import types

import loss_landscapes
import numpy as np
import pytest
import torch
import yaml
from loss_landscapes.metrics import Metric

from conftest import ROOT, model_settings, planned_jobs, validated
from vitlandscape import cli
from vitlandscape.data import prepare
from vitlandscape.landscape import bench, bench_cases
from vitlandscape.models.arch import build_mae
from vitlandscape.train import stages

GRID = 3  # alphas = betas = (-1, 0, 1)


@pytest.fixture(scope="module")
def run_config(tmp_path_factory):
    """A finished run's effective config on an npz data set: an official-format MAE and a
    linear probe (BatchNorm buffers) trained on it, 24 evaluation images in batches of 10."""
    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", images=rng.integers(0, 256, size=(60, 16, 16, 3), dtype=np.uint8),
             labels=np.arange(60) % 3)
    data_cfg = {"dataset": "npz", "path": str(root / "data.npz"), "image_size": 16, "eval_samples": 24, "seed": 0,
                "test_fraction": 0.25}
    prepare.prepare_data(data_cfg, root / "data.pt")
    torch.manual_seed(0)
    cfg = model_settings("mae")
    torch.save({"model": build_mae(cfg["arch"]).state_dict(), "args": argparse.Namespace(norm_pix_loss=False)},
               root / "mae.pth")
    stages.downstream(cfg, "probe", root / "data.pt", root / "mae.pth", out=root / "probe.pt",
                      metrics_out=root / "probe.json")
    model = {k: v for k, v in cfg.items() if k != "name"}
    model["checkpoint"] = str(root / "mae.pth")
    model["probe"] = {**model["probe"], "checkpoint": str(root / "probe.pt")}
    landscape = {"alpha": [-1.0, 1.0, 21], "beta": [-1.0, 1.0, 21], "batch_size": 10, "mask_seed": 3,
                 "direction_seed": 0, "normalization": "filter", "perturb_1d": False, "perturb_frozen": False,
                 "orthogonal": False}
    config = {"data": data_cfg, "models": {"m": model}, "landscape": landscape}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def run_bench(root, out_name: str, repeats: int = 1) -> None:
    cli.main(["bench", "--config", str(root / "config.yaml"), "--data", str(root / "data.pt"),
              "--surfaces", "m/pretext", "m/probe", "--grid", str(GRID), "--repeats", str(repeats), "--device", "cpu",
              "--out", str(root / out_name)])


@pytest.mark.subprocess
def test_every_method_computes_the_grid_the_engine_computes(run_config, capsys):
    run_bench(run_config, "bench.json", repeats=2)
    result = json.loads((run_config / "bench.json").read_text())
    assert set(result["machine"]) == {"cpu", "cores", "torch", "loss_landscapes", "threads", "device", "device_name"}
    assert result["machine"]["threads"] == 1 and result["machine"]["device"] == "cpu"
    assert result["grid"] == {"side": 3, "points": 9, "alpha": [-1.0, 1.0, 3], "beta": [-1.0, 1.0, 3],
                              "batch_size": 10, "precision": "fp32"}
    assert "peak resident set size" in result["memory"] and result["repeats"] == 2
    assert [s["surface"] for s in result["surfaces"]] == ["m/pretext", "m/probe"]
    for s in result["surfaces"]:
        methods = s["methods"]
        assert list(methods) == ["ceiling", "engine", "loss_landscapes", "li_loop"]
        # the package skips (alpha, -1) on its even alpha columns 0 and 2
        assert methods["loss_landscapes"]["compared_points"] == 7 and methods["li_loop"]["compared_points"] == 9
        for name in bench.PEERS:
            assert 0 <= methods[name]["max_rel_diff"] <= bench.RTOL, name
        for row in methods.values():
            assert row["points"] == 9 and len(row["seconds_per_round"]) == 2
            assert row["seconds"] == min(row["seconds_per_round"]) > 0
            assert math.isclose(row["points_per_s"], 9 / row["seconds"])
            assert math.isclose(row["images_per_s"], row["points_per_s"] * 24)
            # added: over the resident size with torch, the model and the data loaded (> 100 MB)
            assert row["peak_memory_mb"] - 100 > row["added_memory_mb"] > 0
        assert math.isclose(s["efficiency"], methods["engine"]["images_per_s"] / methods["ceiling"]["images_per_s"])
        ours = methods["engine"]["seconds"] / methods["engine"]["points"]
        for name in bench.PEERS:
            assert math.isclose(s["speedup"][name], methods[name]["seconds"] / methods[name]["points"] / ours)
    printed = capsys.readouterr().out
    assert "m/probe          li_loop" in printed and f"efficiency {result['surfaces'][0]['efficiency']:.3f}" in printed


def li_loop_off(setup):
    """The Li et al. loop with one loss 1e-3 too high, at (alpha, beta) = (0, 1). At module
    level: the bench pickles it by name into its worker process."""
    losses, compared = bench.li_loop(setup)
    losses[1, 2] *= 1 + 1e-3
    return losses, compared


@pytest.mark.subprocess
def test_a_peer_off_by_1e3_stops_the_bench_before_any_ratio(run_config, monkeypatch, capsys):
    monkeypatch.setitem(bench.METHODS, "li_loop", li_loop_off)
    with pytest.raises(bench.BenchError, match=r"li_loop disagrees with the engine at \(alpha, beta\) = \(0, 1\).*"
                                               r"relative difference 0.001 > rtol 0.0001"):
        run_bench(run_config, "off.json")
    assert not (run_config / "off.json").exists()
    assert "speedup" not in capsys.readouterr().out


def test_check_agreement_compares_only_shared_points_and_counts_nan_as_off():
    engine = np.array([[1.0, 2.0], [3.0, 4.0]])
    compared = np.array([[False, True], [True, True]])
    theirs = engine * np.array([[5.0, 1 + 5e-5], [1.0, 1.0]])  # off only where not compared
    assert bench.check_agreement("peer", engine, theirs, compared, [0, 1], [0, 1]) == pytest.approx(5e-5)
    theirs[1, 0] = np.nan
    with pytest.raises(bench.BenchError, match=r"peer disagrees .* = \(1, 0\): loss nan against 3"):
        bench.check_agreement("peer", engine, theirs, compared, [0, 1], [0, 1])


class Position(torch.nn.Module):
    def __init__(self, a: float, b: float):
        super().__init__()
        self.p = torch.nn.Parameter(torch.tensor([a, b], dtype=torch.float64))


class PositionCode(Metric):
    """Where the package put the model: 100 alpha + beta."""

    def __call__(self, model_wrapper) -> float:
        a, b = model_wrapper.modules[0].p.tolist()
        return 100 * a + b


@pytest.mark.parametrize("n", [3, 4])
def test_package_points_are_placed_on_our_grid_as_its_walk_visits_them(n):
    """planar_interpolation itself, on a model whose one parameter is its position (alpha, beta)."""
    step, lo = 0.5, -1.0  # exact in binary: the walk's sums carry no rounding
    corners = Position(lo, lo), Position(lo + n * step, lo), Position(lo, lo + n * step)
    raw = loss_landscapes.planar_interpolation(*corners, PositionCode(), steps=n)
    losses, compared = bench.package_on_grid(np.asarray(raw, dtype=float))
    axis = lo + step * np.arange(n)
    expected = 100 * axis[:, None] + axis[None, :]
    np.testing.assert_array_equal(losses[compared], expected[compared])
    assert compared.sum() == n * n - (n + 1) // 2
    assert not compared[0::2, 0].any() and compared[1::2, 0].all()


def test_default_surfaces_are_the_first_pretext_and_the_first_supervised_loss(default_config):
    assert bench_cases.default_surfaces(default_config["models"]) == ["mae/pretext", "sup/supervised"]
    without_supervised = {k: v for k, v in default_config["models"].items() if k != "sup"}
    assert bench_cases.default_surfaces(without_supervised) == ["mae/pretext", "mae/probe"]


@pytest.mark.subprocess
def test_bench_rule_is_a_target_outside_all(tmp_path):
    """On the embedded default it needs mae's and sup's pretraining, not rcmae's; `all` leaves it out."""
    config = ("--configfile", str(ROOT / "config" / "config.yaml"))  # after the targets
    jobs = planned_jobs(tmp_path, "bench", *config, snakefile_dir=ROOT)
    assert ("bench", {}) in jobs
    assert {w["model"] for rule, w in jobs if rule == "pretrain"} == {"mae", "sup"}
    assert "bench" not in {rule for rule, _ in planned_jobs(tmp_path, *config, snakefile_dir=ROOT)}


def test_the_ceiling_passes_over_the_evaluation_set_once_per_grid_point():
    passes = []
    objective = types.SimpleNamespace(evaluate=lambda: passes.append(1))
    bench.ceiling(types.SimpleNamespace(objective=objective, alphas=np.zeros(3), betas=np.zeros(4)))
    assert len(passes) == 12


def test_bench_cases_name_the_checkpoints_the_workflow_measures(default_config):
    """Trained checkpoints where the config gives none, the given one where it does; an unknown
    surface is refused naming those the config has."""
    config = validated(default_config)  # defaults filled, as the workflow's config
    models = config["models"]
    cases = bench_cases.cases(config, ["mae/probe", "sup/supervised"])
    assert [c["checkpoint"] for c in cases] == ["results/checkpoints/mae/probe.pt", "results/checkpoints/sup/pretrain.pt"]
    assert cases[0]["data"] == "results/data/digits.pt" and cases[0]["model"] is models["mae"]
    given = {**config, "models": {**models, "mae": {**models["mae"], "probe": {**models["mae"]["probe"],
                                                                                      "checkpoint": "mine.pt"}}}}
    assert bench_cases.cases(given, ["mae/probe"])[0]["checkpoint"] == "mine.pt"
    with pytest.raises(ValueError, match="has no surface mae/finetune2; it has mae/pretext"):
        bench_cases.cases(config, ["mae/finetune2"])
