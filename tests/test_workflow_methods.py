"""The methods beyond MAE end to end in one cut-down run: a MoCo v3 model trained by the workflow
(its contrastive and probe landscapes measured) and a released DINOv2-style backbone given to a
model with a timm arch (no pretraining planned, the probe trained on it)."""
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml
from safetensors.torch import save_file
from test_timm_arch import DINOV2, SMALL, released

from conftest import copy_workflow, model_settings, planned_jobs, snakemake
from vitlandscape.landscape import objectives

pytestmark = pytest.mark.e2e

TIMM_ARCH = {"timm": DINOV2, "img_size": 16, "patch_size": 4, **SMALL}
QUICK = {"epochs": 2, "batch_size": 64, "warmup_epochs": 0, "recipe": {"precision": "fp32", "hflip": 0.0}}


@pytest.fixture(scope="module")
def methods_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("methods"))
    writer = released(img_size=32, classes=0, patch_size=4)  # another grid: the job resamples
    save_file(writer.state_dict(), workdir / "model.safetensors")
    probe = {**QUICK, "features": "cached"}
    config = {"data": {"dataset": "digits", "image_size": 16, "eval_samples": 64},
              "models": {"dinov2": {"method": "mae", "arch": TIMM_ARCH, "checkpoint": "model.safetensors",
                                    "objectives": ["probe"], "accuracy": ["probe"], "probe": probe},
                         "moco": {"method": "mocov3", "arch": {"img_size": 16, "patch_size": 4, "embed_dim": 32,
                                                               "depth": 2, "num_heads": 4},
                                  "moco": {"dim": 16, "mlp_dim": 32}, "downstream_weights": "base",
                                  "pretrain": {**QUICK, "recipe": {**QUICK["recipe"], "crop_scale": [0.2, 1.0]}},
                                  "probe": probe, "accuracy": ["probe"]}},
              "landscape": {"alpha": [-1.0, 1.0, 5], "beta": [-1.0, 1.0, 5], "tile": [5, 5], "line": [-1.0, 1.0, 5],
                            "batch_size": 32, "interpolations": []},
              "trajectories": {"models": []},
              "figures": {"formats": ["png"], "dpi": 60, "compare": []},
              "metrics": {"hessian": {"top_k": 1, "lanczos_steps": 4, "trace_probes": 2, "density_runs": 1,
                                      "density_steps": 4},
                          "flatness": {"sigmas": [0.1], "samples": 2},
                          "claims": [{"name": "moco_probe", "claim": "the probe on MoCo v3 is wider", "wider": "moco/probe",
                                      "than": "dinov2/probe", "measures": ["basin_radius_r0.5"]}]}}
    (workdir / "methods.yaml").write_text(yaml.safe_dump(config))
    jobs = [(rule, w) for rule, w in planned_jobs(workdir, "--configfile", "methods.yaml")]
    run = snakemake(workdir, "--cores", "2", "--configfile", "methods.yaml")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return workdir, jobs, writer


def test_a_given_backbone_plans_no_pretraining_and_a_mocov3_model_does(methods_run):
    _, jobs, _ = methods_run
    pretrained = {w.get("model") for rule, w in jobs if rule == "pretrain"}
    assert pretrained == {"moco"}
    assert {(w["model"], w["objective"]) for rule, w in jobs if rule == "assemble"} == {
        ("dinov2", "probe"), ("moco", "contrastive"), ("moco", "probe")}


def test_the_released_backbone_is_probed_with_its_registers_untouched(methods_run):
    workdir, _, writer = methods_run
    surface = xr.open_zarr(workdir / "results/surfaces/dinov2/probe.zarr")
    assert surface.attrs["checkpoint"] == "results/checkpoints/dinov2/probe.pt"
    assert np.isfinite(surface.loss.values).all() and surface.loss.shape == (5, 5)
    probe, _ = objectives.load("probe", workdir / "results/checkpoints/dinov2/probe.pt", model_settings(arch=TIMM_ARCH))
    assert torch.equal(probe.reg_token, writer.reg_token)  # the released registers, untouched by the probe
    assert "pos_embed resampled from (1, 64, 48) to (1, 16, 48)" in (workdir / "results/logs/probe/dinov2.log").read_text()


def test_the_contrastive_surface_records_what_fixes_it_and_is_measured(methods_run):
    workdir, _, _ = methods_run
    surface = xr.open_zarr(workdir / "results/surfaces/moco/contrastive.zarr")
    assert surface.attrs["objective"] == "contrastive" and surface.attrs["method"] == "mocov3"
    assert (surface.attrs["view_seed"], surface.attrs["contrastive_batch_size"]) == (0, 32)
    assert "accuracy" not in surface and np.isfinite(surface.loss.values).all()
    summary = pd.read_csv(workdir / "results/metrics/summary.csv")
    assert sorted(map(tuple, summary[["model", "objective"]].values.tolist())) == [
        ("dinov2", "probe"), ("moco", "contrastive"), ("moco", "probe")]
    assert np.isfinite(summary["lambda_max"]).all()
    accuracy = pd.read_csv(workdir / "results/metrics/accuracy.csv").set_index("model")
    assert 0 < accuracy.loc["moco", "linear_probe_top1"] <= 1 and accuracy.loc["moco", "method"] == "mocov3"
    findings = pd.read_csv(workdir / "results/metrics/findings.csv")
    assert findings["claim"].tolist() == ["moco_probe"]
