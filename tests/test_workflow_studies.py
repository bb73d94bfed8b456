"""A cut-down study end to end: seeds, direction seeds and an eval seed of tiny models, its
tables checked against the per-variant metrics files, and adding a seed runs only its chain."""
import json

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml

from conftest import TINY_ARCH, copy_workflow, planned_jobs, snakemake

pytestmark = pytest.mark.e2e

ENCODER = {k: v for k, v in TINY_ARCH.items() if not k.startswith("decoder")}
QUICK = {"epochs": 3, "batch_size": 64, "warmup_epochs": 1, "recipe": {"precision": "fp32", "hflip": 0.0}}
STUDIES = [{"name": "seeds", "models": ["mae", "sup"], "vary": {"seed": [0, 1]}, "direction_seeds": [0, 1]},
           {"name": "batch", "models": ["mae"], "vary": {"pretrain.batch_size": [32, 64]}, "eval_seeds": [0, 4]}]


def study_config(studies=STUDIES) -> dict:
    light = {**QUICK, "recipe": {**QUICK["recipe"], "crop_scale": None, "rand_augment": None, "random_erasing": 0.0,
                                 "mixup": 0.0, "cutmix": 0.0}}
    return {"data": {"dataset": "digits", "image_size": 16, "eval_samples": 64},
            "models": {"mae": {"method": "mae", "arch": TINY_ARCH, "pretrain": QUICK,
                               "probe": {**QUICK, "features": "cached"}, "accuracy": ["probe"]},
                       "sup": {"method": "supervised", "arch": ENCODER, "pretrain": light}},
            "landscape": {"alpha": [-1.0, 1.0, 7], "beta": [-1.0, 1.0, 7], "tile": [7, 7], "line": [-1.0, 1.0, 5],
                          "interpolations": []},
            "trajectories": {"models": []},
            "figures": {"formats": ["png"], "dpi": 60, "compare": []},
            "metrics": {"hessian": {"top_k": 1, "lanczos_steps": 6, "trace_probes": 2, "density_runs": 1,
                                    "density_steps": 4},
                        "flatness": {"sigmas": [0.1], "samples": 2}, "relative_rises": [0.5],
                        "absolute_rises": [0.1], "sharpness_rho": [0.5],
                        "claims": [{"name": "mae_wider", "claim": "MAE's basin is wider", "wider": "mae/pretext",
                                    "than": "sup/supervised",
                                    "measures": ["basin_radius_r0.5", "flatness_rel_s0.1", "lambda_max"]}]},
            "studies": studies}


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("studies"))
    (workdir / "study.yaml").write_text(yaml.safe_dump(study_config()))
    run = snakemake(workdir, "--cores", "2", "--configfile", "study.yaml")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return workdir


def metrics_file(workdir, surface) -> dict:
    return json.loads((workdir / f"results/metrics/{surface}.json").read_text())


def test_the_summary_has_every_replicate_with_its_metrics_file_values(study_run):
    summary = pd.read_csv(study_run / "results/studies/seeds/summary.csv", dtype={"setting": str})
    # mae: 2 objectives, sup: 1; 2 training seeds x 2 direction seeds each
    assert len(summary) == (2 + 1) * 2 * 2
    assert summary[summary["surface"] == "mae.seed=1.directions=1/probe"][
        ["model", "variant", "setting", "training_seed", "direction_seed", "eval_seed"]].values.tolist() == [
        ["mae", "mae.seed=1", "1", 1, 1, 0]]
    for row in summary.to_dict("records"):
        m = metrics_file(study_run, row["surface"])
        assert m["model"] == row["surface"].split("/")[0] and m["objective"] == row["objective"]
        assert row["centre_loss"] == pytest.approx(m["centre_loss"], rel=1e-5)
        assert row["convex_area"] == pytest.approx(m["surface"]["convex_region"]["area"], rel=1e-5)
        assert row["lambda_max"] == pytest.approx(max(m["hessian"]["top_eigenvalues"]), rel=1e-5)
        assert row["flatness_rel_s0.1"] == pytest.approx(
            m["flatness"]["mean_rise"][0] / m["flatness"]["centre_loss"], rel=1e-5)


def test_a_variant_on_other_directions_shares_its_trainings_weights_and_hessian(study_run):
    base = xr.open_zarr(study_run / "results/surfaces/mae.seed=1/pretext.zarr")
    other = xr.open_zarr(study_run / "results/surfaces/mae.seed=1.directions=1/pretext.zarr")
    assert other.attrs["checkpoint"] == "results/checkpoints/mae.seed=1/pretrain.pt"
    assert other.attrs["checkpoint_sha256"] == base.attrs["checkpoint_sha256"]
    assert other.attrs["directions_sha256"] != base.attrs["directions_sha256"]
    assert float(other.loss.sel(alpha=0, beta=0)) == float(base.loss.sel(alpha=0, beta=0))
    assert not np.allclose(other.loss.values, base.loss.values)
    assert (metrics_file(study_run, "mae.seed=1.directions=1/pretext")["hessian"]
            == metrics_file(study_run, "mae.seed=1/pretext")["hessian"])
    assert not (study_run / "results/metrics/mae.seed=1.directions=1/pretext/hessian.json").exists()
    assert not (study_run / "results/checkpoints/mae.seed=1.directions=1").exists()
    base_weights, seed_weights = (torch.load(study_run / f"results/checkpoints/{m}/pretrain.pt")["model"]
                                  for m in ("mae", "mae.seed=1"))
    assert not torch.equal(base_weights["blocks.0.attn.qkv.weight"], seed_weights["blocks.0.attn.qkv.weight"])


def test_an_eval_seed_measures_the_same_weights_on_another_subset(study_run):
    data = torch.load(study_run / "results/data/digits.pt", weights_only=True)
    other = torch.load(study_run / "results/data/digits.eval=4.pt", weights_only=True)
    assert torch.equal(data["train_images"], other["train_images"])  # the same training split
    assert not torch.equal(data["eval_index"], other["eval_index"])
    base = xr.open_zarr(study_run / "results/surfaces/mae.pretrain.batch_size=32/pretext.zarr")
    moved = xr.open_zarr(study_run / "results/surfaces/mae.pretrain.batch_size=32.eval=4/pretext.zarr")
    assert moved.attrs["checkpoint_sha256"] == base.attrs["checkpoint_sha256"]
    assert float(moved.loss.sel(alpha=0, beta=0)) != float(base.loss.sel(alpha=0, beta=0))


def test_the_findings_pair_replicates_as_the_summary_says(study_run):
    summary = pd.read_csv(study_run / "results/studies/seeds/summary.csv")
    table = pd.read_csv(study_run / "results/studies/seeds/findings.csv").set_index("measure")
    key = ["training_seed", "direction_seed", "eval_seed"]
    wider = summary[summary["objective"] == "pretext"].set_index(key)
    than = summary[summary["objective"] == "supervised"].set_index(key)
    for measure in ("basin_radius_r0.5", "flatness_rel_s0.1", "lambda_max"):
        row = table.loc[measure]
        difference = (wider[measure] - than.loc[wider.index, measure]).to_numpy()
        assert row["n"] == 4 and row["setting"] == "all"
        # the CSVs keep 6 significant digits of each value (and of the mean): a difference of two
        # values is good to about 1e-6 of their size
        scale = np.abs(wider[measure]).max() + np.abs(than[measure]).max()
        assert row["mean_difference"] == pytest.approx(difference.mean(), abs=2e-6 * scale)
        sense = 1 if measure.startswith("basin") else -1
        assert row["holds_in"] == int((sense * difference > 0).sum())
        assert row["ci_low"] <= row["mean_difference"] <= row["ci_high"]
        expected = ("holds" if sense * row["ci_low"] > 0 and sense * row["ci_high"] > 0 else
                    "does not hold" if sense * row["ci_low"] < 0 and sense * row["ci_high"] < 0 else "undecided")
        assert row["verdict"] == expected or "grid edge" in str(row["reason"])
    batch = pd.read_csv(study_run / "results/studies/batch/findings.csv")
    assert set(batch["claim"]) == {"pretrain.batch_size=64_vs_32:mae/pretext"}  # no sup in the batch study
    assert set(batch["n"]) == {2}  # 2 eval subsets of one training each
    summary = pd.read_csv(study_run / "results/studies/batch/summary.csv")
    assert summary.set_index("variant")["pretrain_lr"].to_dict() == pytest.approx(
        {"mae.pretrain.batch_size=32": 1.5e-4 * 32 / 256, "mae": 1.5e-4 * 64 / 256})


def test_the_study_figures_are_drawn(study_run):
    for name in ("seeds/seeds_measures", "seeds/seeds_contours_pretext", "seeds/seeds_contours_supervised",
                 "batch/batch_measures", "batch/batch_contours_probe"):
        image = matplotlib.image.imread(study_run / f"results/studies/{name}.png")
        assert image.shape[0] >= 200 and image[..., :3].std() > 0.02, name


def test_adding_a_seed_runs_only_that_seeds_chain(study_run):
    studies = [{**STUDIES[0], "vary": {"seed": [0, 1, 2]}}, STUDIES[1]]
    (study_run / "more.yaml").write_text(yaml.safe_dump(study_config(studies)))
    jobs = planned_jobs(study_run, "--configfile", "more.yaml")
    models = {w.get("model") or w.get("variant") for rule, w in jobs} - {None}
    assert models == {"mae.seed=2", "mae.seed=2.directions=1", "sup.seed=2", "sup.seed=2.directions=1"}
    assert {w["study"] for rule, w in jobs if "study" in w} == {"seeds"}
