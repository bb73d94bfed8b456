"""config/fashion.yaml: its dry run plans the default's kinds of job, and a cut-down version
runs end to end: the whole Fashion-MNIST training split read from Debian's files (`apt-get
install dataset-fashion-mnist`; .ci/run installs it), one epoch per training stage, small grids.
"""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import xarray as xr
import yaml

from conftest import ROOT, copy_workflow, planned_jobs, snakemake
from vitlandscape.data import files

FOLDER = Path(files.DEFAULT_PATHS["fashion_mnist"])
INSTALLED = all(any((FOLDER / f"{name}{gz}").is_file() for gz in ("", ".gz")) for name in files.IDX_FILES)

pytestmark = [pytest.mark.real_data,
              pytest.mark.skipif(not INSTALLED, reason=f"Fashion-MNIST is not in {FOLDER}: "
                                                       "apt-get install dataset-fashion-mnist")]


@pytest.mark.subprocess
def test_the_full_config_plans_every_kind_of_job(tmp_path):
    """A dry run of config/fashion.yaml as it is: the default's rules, the reconstructions too."""
    workdir = copy_workflow(tmp_path / "full")
    rules = {rule for rule, _ in planned_jobs(workdir, "--configfile", "config/fashion.yaml")}
    default = {rule for rule, _ in planned_jobs(copy_workflow(tmp_path / "default"))}
    assert rules == default and "reconstructions_figure" in rules and "trajectory_tile" in rules


def cut_down(config: dict) -> dict:
    """The same models, stages, surfaces, metrics and claims at a fraction of the cost."""
    config["data"]["eval_samples"] = 48
    for model in config["models"].values():
        for stage in ("pretrain", "probe", "finetune"):
            if stage in model:
                model[stage].update(epochs=1, warmup_epochs=0)
    landscape = config["landscape"]
    landscape.update(alpha=[-1.0, 1.0, 5], beta=[-1.0, 1.0, 5], tile=[5, 5], line=[-1.0, 1.0, 5])
    landscape["interpolations"][0]["range"] = [0.0, 1.0, 3]
    config["trajectories"]["snapshots"] = {"points": 3, "spacing": "linear"}
    config["metrics"]["hessian"].update(lanczos_steps=6, trace_probes=2, density_steps=4)
    config["metrics"]["flatness"]["samples"] = 2
    config["figures"]["dpi"] = 50
    return config


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("fashion"))
    config = cut_down(yaml.safe_load((ROOT / "config/fashion.yaml").read_text()))
    (workdir / "cut.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run = snakemake(workdir, "--cores", "2", "--configfile", "cut.yaml")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return workdir


@pytest.mark.e2e
def test_the_whole_split_is_read_at_its_own_size(fashion_run):
    prepared = torch.load(fashion_run / "results/data/fashion_mnist.pt", weights_only=True, mmap=True)
    assert prepared["train_images"].shape == (60_000, 3, 28, 28)
    assert prepared["test_images"].shape == (10_000, 3, 28, 28)
    assert torch.equal(prepared["eval_index"], torch.sort(prepared["eval_index"]).values)
    assert torch.bincount(prepared["test_labels"]).tolist() == [1000] * 10  # the official test split


@pytest.mark.e2e
def test_every_model_learns_and_every_result_is_there(fashion_run):
    results = fashion_run / "results"
    table = pd.read_csv(results / "metrics/accuracy.csv").set_index("model")
    assert table.loc["sup", "supervised_top1"] > 0.5  # one epoch of 60,000 images; chance is 0.1
    for model in ("mae", "rcmae"):
        assert table.loc[model, "finetune_top1"] > 0.5
        assert table.loc[model, "linear_probe_top1"] > 0.3
    surfaces = {(p.parent.name, p.stem) for p in (results / "surfaces").glob("*/*.zarr")}
    assert surfaces == {("mae", "pretext"), ("mae", "probe"), ("rcmae", "pretext"), ("rcmae", "probe"),
                        ("sup", "supervised")}
    for model, objective in surfaces:
        ds = xr.open_zarr(results / f"surfaces/{model}/{objective}.zarr")
        assert ds.loss.shape == (5, 5) and ds.attrs["eval_samples"] == 48
        assert (results / f"lines/{model}/{objective}.nc").is_file()
        for part in ("hessian", "flatness"):
            assert json.loads((results / f"metrics/{model}/{objective}/{part}.json").read_text())["eval_samples"] == 48
    findings = pd.read_csv(results / "metrics/findings.csv")
    assert len(findings) == 11 and set(findings.verdict) <= {"holds", "does not hold", "undecided"}
    figures = results / "figures"
    for model in ("mae", "rcmae"):
        assert (figures / f"{model}/pretext_reconstructions.png").stat().st_size > 0
        assert (results / f"trajectories/{model}/pretrain/pca.json").is_file()
    assert (figures / "trajectories/mae_vs_rcmae/pretrain_path.png").is_file()
    assert (results / "metrics/convergence.csv").is_file()
