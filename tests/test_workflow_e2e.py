"""The default workflow end to end, and rerunning only what changed.

Runs the embedded default (config/config.yaml) in a copy of the workflow, so edits to the
copy's library code and config cannot touch the repository.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from conftest import ROOT

pytestmark = pytest.mark.e2e

FIGURE_RULES = {"surface_figures", "accuracy_figure", "compare_figures", "line_figure", "interpolation_figure"}


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
                          capture_output=True, text=True)


def planned_jobs(workdir: Path, *args: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job a dry run would execute."""
    run = snakemake(workdir, "-n", *args)
    assert run.returncode == 0, run.stdout + run.stderr
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", run.stdout):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head:
            continue
        found = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        wildcards = dict(kv.split("=", 1) for kv in found.group(1).split(", ")) if found else {}
        jobs.append((head.group(1), wildcards))
    return jobs


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    shutil.copy(ROOT / "Snakefile", workdir)
    for folder in ("workflow", "config", "envs"):
        shutil.copytree(ROOT / folder, workdir / folder, ignore=shutil.ignore_patterns("__pycache__"))
    run = snakemake(workdir, "--cores", "2")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return workdir, run


def test_accuracy_table(workflow_run):
    workdir, run = workflow_run
    table = pd.read_csv(workdir / "results/metrics/accuracy.csv").set_index("model")
    assert list(table.index) == ["mae", "rcmae", "sup"]
    assert table.loc["sup", "supervised_top1"] > 0.5  # 10 classes: chance is 0.1
    for model in ("mae", "rcmae"):
        assert table.loc[model, "linear_probe_top1"] > table.loc[model, "probe_random_init_top1"]
        assert table.loc[model, "finetune_top1"] > 0.5
    assert "results/figures" in run.stdout + run.stderr


def test_surfaces_follow_the_contract(workflow_run):
    workdir, _ = workflow_run
    expected = {("mae", "pretext"), ("mae", "probe"), ("rcmae", "pretext"), ("rcmae", "probe"),
                ("sup", "supervised")}
    found = {(p.parent.name, p.stem) for p in (workdir / "results/surfaces").glob("*/*.zarr")}
    assert found == expected
    for model, objective in expected:
        ds = xr.open_zarr(workdir / f"results/surfaces/{model}/{objective}.zarr")
        assert ds.loss.shape == (21, 21) and ds.loss.encoding["chunks"] == (11, 11)
        assert ("accuracy" in ds) == (objective != "pretext")
        assert ds.attrs["model"] == model and ds.attrs["objective"] == objective
        loss = ds.loss.values
        assert np.isfinite(loss).all()
        centre = ds.loss.sel(alpha=0.0, beta=0.0).item()
        assert centre <= np.nanmin(loss) + 0.05 * (np.nanmax(loss) - np.nanmin(loss))
        line = xr.open_dataset(workdir / f"results/lines/{model}/{objective}.nc", engine="scipy")
        assert line.loss.sel(alpha=0.0).item() == pytest.approx(centre, rel=1e-6)
    path = xr.open_dataset(workdir / "results/interpolations/mae_to_rcmae.nc", engine="scipy")
    mae = xr.open_zarr(workdir / "results/surfaces/mae/pretext.zarr").loss.sel(alpha=0.0, beta=0.0).item()
    assert path.loss.sel(t=0.0).item() == pytest.approx(mae, rel=1e-6)


def test_figures_and_benchmarks(workflow_run):
    workdir, _ = workflow_run
    figures = workdir / "results/figures"
    for name in ("mae/pretext_3d.png", "mae/pretext_contour.pdf", "sup/supervised_accuracy.png",
                 "rcmae/probe.html", "mae/pretext.vts", "compare/mae_vs_rcmae_probe_compare.png",
                 "compare/mae_vs_supervised_basins.png"):
        assert (figures / name).stat().st_size > 1000, name
    benchmarks = list((workdir / "results/benchmarks").rglob("*.tsv"))
    logs = list((workdir / "results/logs").rglob("*.log"))
    assert len(benchmarks) == len(logs) > 50


def test_report(workflow_run):
    workdir, _ = workflow_run
    run = snakemake(workdir, "--report", "results/report.html")
    assert run.returncode == 0, run.stderr[-3000:]
    html = (workdir / "results/report.html").read_text(errors="replace")
    assert "accuracy.csv" in html and "mae_vs_rcmae_pretext_compare.png" in html


def test_nothing_to_do_after_a_complete_run(workflow_run):
    workdir, _ = workflow_run
    assert planned_jobs(workdir) == []


def _write_config(workdir: Path, change) -> str:
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    change(config)
    path = workdir / "changed.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_changing_one_models_training_reruns_only_its_chain(workflow_run):
    workdir, _ = workflow_run

    def more_epochs(config):
        config["models"]["rcmae"]["pretrain"] = {**config["models"]["rcmae"]["pretrain"], "epochs": 61}

    jobs = planned_jobs(workdir, "--configfile", _write_config(workdir, more_epochs))
    rules = {rule for rule, _ in jobs}
    assert ("pretrain", {"model": "rcmae"}) in jobs
    assert {"downstream", "directions", "surface_tile", "assemble"} <= rules
    models = {w.get("model") for _, w in jobs} - {None}
    assert models == {"rcmae"}
    assert "prepare_data" not in rules


def test_changing_figure_settings_reruns_only_figures(workflow_run):
    workdir, _ = workflow_run

    def bigger_delta(config):
        config["figures"]["basin_delta"] = 0.5

    rules = {rule for rule, _ in planned_jobs(workdir, "--configfile", _write_config(workdir, bigger_delta))}
    assert rules <= FIGURE_RULES | {"effective_config", "all"}
    assert FIGURE_RULES <= rules


def test_editing_library_code_reruns_the_stages_that_use_it(workflow_run):
    workdir, _ = workflow_run
    module = workdir / "workflow/vitlandscape/figures.py"
    original = module.read_text()
    try:
        module.write_text(original + "\n# edited\n")
        rules = {rule for rule, _ in planned_jobs(workdir)}
        assert rules <= FIGURE_RULES | {"all"}
        assert FIGURE_RULES <= rules
    finally:
        module.write_text(original)
    module = workdir / "workflow/vitlandscape/train.py"
    original = module.read_text()
    try:
        module.write_text(original + "\n# edited\n")
        jobs = planned_jobs(workdir)
        rules = {rule for rule, _ in jobs}
        assert sum(rule == "pretrain" for rule, _ in jobs) == 3
        assert sum(rule == "downstream" for rule, _ in jobs) == 4
        assert "prepare_data" not in rules
    finally:
        module.write_text(original)
    assert planned_jobs(workdir) == []
