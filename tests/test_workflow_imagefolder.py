"""The whole workflow on a streamed ImageFolder (train/ + val/ of small generated JPEGs).

Two MAE models, one per `probe.features` mode, and a supervised ViT, all tiny; a 3 x 3
grid. Prints the time of every stage from `results/benchmarks/`.
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml

from conftest import ROOT, TINY_ARCH, make_image_folder, planned_jobs, snakemake

pytestmark = pytest.mark.e2e

EVAL = 16
STAGE = {"epochs": 2, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 0}
SURFACES = {("mae_stream", "pretext"), ("mae_stream", "probe"), ("mae_cached", "pretext"),
            ("mae_cached", "probe"), ("sup", "supervised")}


def config(data_path: Path, workers: int) -> dict:
    mae = {"method": "mae", "arch": TINY_ARCH, "pretrain": STAGE, "finetune": {**STAGE, "epochs": 1}}
    return {
        "data": {"dataset": "imagefolder", "path": str(data_path), "image_size": 16, "eval_samples": EVAL,
                 "workers": workers},
        "device": "cpu",
        "models": {
            "mae_stream": {**mae, "probe": {**STAGE, "features": "streaming"}},
            "mae_cached": {**mae, "probe": {**STAGE, "features": "cached"}},
            "sup": {"method": "supervised", "arch": {k: TINY_ARCH[k] for k in
                                                     ("img_size", "patch_size", "embed_dim", "depth", "num_heads")},
                    "pretrain": STAGE},
        },
        "landscape": {"alpha": [-1.0, 1.0, 3], "beta": [-1.0, 1.0, 3], "tile": [3, 3], "line": [-1.0, 1.0, 3],
                      "batch_size": 8, "device": "cpu"},
        "figures": {"formats": ["png"], "dpi": 50},
    }


def write_config(workdir: Path, name: str, workers: int) -> str:
    path = workdir / name
    path.write_text(yaml.safe_dump(config(workdir / "folder", workers)))
    return str(path)


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("imagefolder")
    make_image_folder(workdir / "folder", classes=3, train=12, val=3)
    run = snakemake(workdir, "--cores", "2", "--configfile", write_config(workdir, "config.yaml", 1),
                    snakefile_dir=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return workdir


def test_every_target_is_made_and_stage_times_are_recorded(workflow_run):
    workdir = workflow_run
    assert planned_jobs(workdir, "--configfile", str(workdir / "config.yaml"), snakefile_dir=ROOT) == []
    rows = []
    for tsv in sorted((workdir / "results/benchmarks").rglob("*.tsv")):
        rows.append((str(tsv.relative_to(workdir / "results/benchmarks").with_suffix("")),
                     pd.read_csv(tsv, sep="\t")["s"].iloc[0]))
    print("\nseconds per job (results/benchmarks):")
    for name, seconds in rows:
        print(f"  {name:45s} {seconds:6.1f}")
    stages = {}
    for name, seconds in rows:
        stages.setdefault(name.split("/")[0], []).append(seconds)
    print("per stage: " + ", ".join(f"{s} {len(t)} x {np.mean(t):.1f} s" for s, t in stages.items()))
    assert {"prepare_data", "pretrain", "probe", "finetune", "surface_tile"} <= set(stages)


def test_prepared_file_holds_only_the_eval_subset(workflow_run):
    prepared = torch.load(workflow_run / "results/data/imagefolder.pt", weights_only=True)
    assert prepared["streaming"] and "train_images" not in prepared
    assert prepared["eval_images"].dtype == torch.uint8 and prepared["eval_images"].shape == (EVAL, 3, 16, 16)
    assert (prepared["train_count"], prepared["test_count"], prepared["num_classes"]) == (36, 9, 3)


def test_surfaces_are_finite_and_accuracies_recorded(workflow_run):
    workdir = workflow_run
    found = {(p.parent.name, p.stem) for p in (workdir / "results/surfaces").glob("*/*.zarr")}
    assert found == SURFACES
    for model, objective in SURFACES:
        ds = xr.open_zarr(workdir / f"results/surfaces/{model}/{objective}.zarr")
        assert ds.loss.shape == (3, 3) and np.isfinite(ds.loss.values).all(), (model, objective)
        assert ds.attrs["eval_samples"] == EVAL
    table = pd.read_csv(workdir / "results/metrics/accuracy.csv").set_index("model")
    assert sorted(table.index) == ["mae_cached", "mae_stream", "sup"]
    for model in ("mae_stream", "mae_cached"):
        metrics = json.loads((workdir / f"results/checkpoints/{model}/probe.json").read_text())
        assert metrics["train_top1_images"] == EVAL and 0 <= metrics["test_top1"] <= 1


def test_changing_the_workers_reruns_no_computation(workflow_run):
    """Only the record of the config as run (results/config.yaml) is rewritten."""
    workdir = workflow_run
    jobs = planned_jobs(workdir, "--configfile", write_config(workdir, "workers.yaml", 3), snakefile_dir=ROOT)
    assert {rule for rule, _ in jobs} == {"effective_config", "all"}
