"""Determinism: every stage gives bit-identical outputs when run again in a fresh process, and
the same outputs whatever ran before it in its process (no stage leans on the global RNG's
state or on anything another stage left behind).

One driver process (run A) runs every stage of a reduced workflow in the workflow's order:
prepare the data (npz and a streamed image folder), pretrain supervised / MAE / RC-MAE, MAE on
the streamed folder with 2 DataLoader workers, probe, fine-tune, evaluate, directions, surface
tiles, assembly, a 1-D line (probe objective), an interpolation MAE -> RC-MAE, Hessian and
flatness metrics. Run B repeats it in a second process; run C starts from A's files and runs
the stages in another order (directions first, alone in a fresh process, then MAE pretraining,
then the rest backwards), so each stage in C has another history than in A. Every output file
of B and C must equal A's bit for bit: checkpoint tensors with `torch.equal`, histories,
accuracies and metrics exactly (wall-clock `seconds` aside), direction files byte for byte,
tile / line / surface arrays by their bytes.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from conftest import ROOT, make_image_folder, model_settings

THREADS = 1  # the workflow's default (config `threads`)

DRIVER = r'''
import json, shutil, sys, traceback
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[2]))
from vitlandscape.data import prepare
from vitlandscape.landscape import grid, stages as landscape_stages, tiles
from vitlandscape.metrics import stages as metrics_stages
from vitlandscape.train import stages as train_stages

S = json.loads(Path(sys.argv[1]).read_text())
ls = S["pretext"]["landscape"]
TILES = [f"tiles/{t}.nc" for t in grid.tile_names(ls["alpha"], ls["beta"], ls["tile"])]

def surface_tiles():
    for tile, out in zip(grid.tile_names(ls["alpha"], ls["beta"], ls["tile"]), TILES):
        landscape_stages.surface_tile(S["pretext"], "data.pt", "mae.pt", "dirs.safetensors", tile, out)

def line():
    landscape_stages.make_directions(S["probe_objective"], "probe.pt", "probe_dirs.safetensors")
    landscape_stages.line(S["probe_objective"], "data.pt", "probe.pt", "probe_dirs.safetensors", "line.nc")

RUN = {
    "data": lambda: prepare.prepare_data(S["data"], "data.pt"),
    "folder": lambda: prepare.prepare_data(S["folder"], "folder.pt"),
    "supervised": lambda: train_stages.pretrain(S["supervised"], "data.pt", "supervised.pt"),
    "mae": lambda: train_stages.pretrain(S["mae"], "data.pt", "mae.pt"),
    "rcmae": lambda: train_stages.pretrain(S["rcmae"], "data.pt", "rcmae.pt"),
    "streamed": lambda: train_stages.pretrain(S["streamed"], "folder.pt", "streamed.pt", workers=2),
    "probe": lambda: train_stages.downstream(S["mae"], "probe", "data.pt", "mae.pt", out="probe.pt",
                                             metrics_out="probe.json"),
    "finetune": lambda: train_stages.downstream(S["mae"], "finetune", "data.pt", "mae.pt", out="finetune.pt",
                                                metrics_out="finetune.json"),
    "evaluate": lambda: train_stages.evaluate(S["mae"], "finetune", "data.pt", "finetune.pt", "evaluate.json"),
    "directions": lambda: landscape_stages.make_directions(S["pretext"], "mae.pt", "dirs.safetensors"),
    "tiles": surface_tiles,
    "assemble": lambda: tiles.assemble(S["pretext"], TILES, "mae.pt", "dirs.safetensors", "surface.zarr"),
    "line": line,
    "interpolate": lambda: landscape_stages.interpolate(S["interpolation"], "data.pt", "mae.pt", "rcmae.pt",
                                                        "interpolation.nc"),
    "hessian": lambda: metrics_stages.hessian_metrics(S["hessian"], "data.pt", "mae.pt", "hessian.json"),
    "flatness": lambda: metrics_stages.flatness_metrics(S["flatness"], "data.pt", "mae.pt", "flatness.json"),
}
errors = {}
for stage in sys.argv[3:]:
    for name in S["outputs"][stage]:  # removed first, so that the stage must write it again
        path = Path(name)
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    try:
        RUN[stage]()
    except Exception:  # reported by that stage's tests; the other stages go on
        errors[stage] = traceback.format_exc()
Path("errors.json").write_text(json.dumps(errors))
'''

# Each stage's output files (relative to the run's folder), in the workflow's order.
OUTPUTS = {
    "data": ["data.pt"], "folder": ["folder.pt"], "supervised": ["supervised.pt"], "mae": ["mae.pt"],
    "rcmae": ["rcmae.pt"], "streamed": ["streamed.pt"], "probe": ["probe.pt", "probe.json"],
    "finetune": ["finetune.pt", "finetune.json"], "evaluate": ["evaluate.json"],
    "directions": ["dirs.safetensors"], "tiles": [f"tiles/a{i}_b{j}.nc" for i in range(2) for j in range(2)],
    "assemble": ["surface.zarr"], "line": ["probe_dirs.safetensors", "line.nc"],
    "interpolate": ["interpolation.nc"], "hessian": ["hessian.json"], "flatness": ["flatness.json"],
}
STAGES = list(OUTPUTS)
# Run C: directions alone in a fresh process, MAE pretraining after it, then the rest backwards.
REORDERED = ["directions", "mae"] + [s for s in reversed(STAGES) if s not in ("directions", "mae")]


def settings(folder_root: Path, npz: Path) -> dict:
    landscape = {"alpha": [-1.0, 1.0, 3], "beta": [-1.0, 1.0, 3], "tile": [2, 2], "direction_seed": 0,
                 "mask_seed": 3, "normalization": "filter", "perturb_1d": False, "perturb_frozen": False,
                 "orthogonal": False, "batch_size": 16, "device": "cpu", "precision": "fp32",
                 "line": [-1.0, 1.0, 5]}
    mae = model_settings("mae")
    return {
        "data": {"dataset": "npz", "path": str(npz), "image_size": 16, "eval_samples": 32, "seed": 0,
                 "test_fraction": 0.25},
        "folder": {"dataset": "imagefolder", "path": str(folder_root), "image_size": 16, "eval_samples": 4,
                   "seed": 0, "test_fraction": 0.2},
        "supervised": {**model_settings("supervised"), "name": "sup"},
        "mae": mae,
        "rcmae": {**model_settings("rcmae"), "name": "rc"},
        "streamed": model_settings("mae", pretrain={"epochs": 1, "batch_size": 8, "lr": 1e-3,
                                                    "weight_decay": 0.05, "warmup_epochs": 0}),
        "pretext": {**mae, "objective": "pretext", "landscape": landscape},
        "probe_objective": {**mae, "objective": "probe", "landscape": landscape},
        "interpolation": {**mae, "objective": "pretext", "landscape": landscape, "interpolation": "mae_rc",
                          "end_model": "rc", "range": [-0.5, 1.5, 5]},
        "hessian": {**mae, "objective": "pretext", "landscape": landscape,
                    "metrics": {"hessian": {"top_k": 1, "lanczos_steps": 8, "tolerance": None, "trace_probes": 3,
                                            "density_runs": 1, "density_steps": 4, "seed": 0, "batch_size": 16}}},
        "outputs": OUTPUTS,
        "flatness": {**mae, "objective": "pretext", "landscape": landscape,
                     "metrics": {"flatness": {"sigmas": [0.05, 0.2], "samples": 2, "seed": 0}}},
    }


def drive(folder: Path, stages: list[str], settings_file: Path, driver: Path, threads: int = THREADS):
    """Start the driver process in `folder`, outputs at relative paths (so that paths written into
    metadata agree between runs)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "workflow")}
    return subprocess.Popen([sys.executable, str(driver), str(settings_file), str(threads), *stages], cwd=folder,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> None:
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Folders of runs A, B (same order, fresh processes) and C (A's files, another order)."""
    root = tmp_path_factory.mktemp("determinism")
    rng = np.random.default_rng(0)
    n = 96
    labels = np.arange(n) % 3
    images = rng.integers(0, 60, size=(n, 16, 16, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, :, 4 * label:4 * label + 4] = 220
    np.savez(root / "bars.npz", images=images, labels=labels)
    folder_root = make_image_folder(root / "folder", classes=3, train=6, val=2)
    (root / "settings.json").write_text(json.dumps(settings(folder_root, root / "bars.npz")))
    (root / "driver.py").write_text(DRIVER)
    a, b, c = (root / name for name in "abc")
    for path in (a, b, c):
        (path / "tiles").mkdir(parents=True)
    finish(drive(a, STAGES, root / "settings.json", root / "driver.py"))
    shutil.rmtree(c)
    shutil.copytree(a, c)  # C reads A's inputs: B must equal A anyway
    second, reordered = (drive(b, STAGES, root / "settings.json", root / "driver.py"),
                         drive(c, REORDERED, root / "settings.json", root / "driver.py"))
    finish(second)
    finish(reordered)
    return a, b, c


# ---- bit-for-bit comparison of each kind of output ----

def same_objects(a, b, where: str) -> None:
    """Nested checkpoint / JSON contents: tensors bit for bit, everything else exactly; wall-clock
    `seconds` are left out."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.view(torch.uint8) if a.dtype.is_floating_point and a.dim() else a,
                           b.view(torch.uint8) if b.dtype.is_floating_point and b.dim() else b), where
    elif isinstance(a, dict):
        keys = {k for k in a if k != "seconds"}
        assert keys == {k for k in b if k != "seconds"}, where
        for k in keys:
            same_objects(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same_objects(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def same_dataset(a: xr.Dataset, b: xr.Dataset, where: str) -> None:
    assert set(a.variables) == set(b.variables), where
    for name in a.variables:
        x, y = a[name].values, b[name].values
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), f"{where}: {name}"
    same_objects({k: v for k, v in a.attrs.items()}, {k: v for k, v in b.attrs.items()}, f"{where} attrs")


def same_outputs(a: Path, b: Path, stage: str) -> None:
    """The stage's outputs in run folders `a` and `b` are the same, bit for bit."""
    for run in (a, b):
        error = json.loads((run / "errors.json").read_text()).get(stage)
        assert error is None, f"{stage} failed in run {run.name}:\n{error}"
    for name in OUTPUTS[stage]:
        same_output(a / name, b / name)


def same_output(a: Path, b: Path) -> None:
    where = str(b)
    if a.suffix == ".pt":
        same_objects(torch.load(a, weights_only=False), torch.load(b, weights_only=False), where)
    elif a.suffix == ".json":
        same_objects(json.loads(a.read_text()), json.loads(b.read_text()), where)
    elif a.suffix == ".safetensors":
        assert a.read_bytes() == b.read_bytes(), where
    elif a.suffix == ".zarr":
        with xr.open_zarr(a) as x, xr.open_zarr(b) as y:
            same_dataset(x.load(), y.load(), where)
    else:
        with xr.open_dataset(a) as x, xr.open_dataset(b) as y:
            same_dataset(x.load(), y.load(), where)


@pytest.mark.parametrize("stage", STAGES)
def test_a_second_process_gives_the_same_bits(runs, stage):
    a, b, _ = runs
    same_outputs(a, b, stage)


@pytest.mark.parametrize("stage", STAGES)
def test_what_ran_before_in_the_process_changes_nothing(runs, stage):
    """Run C: directions alone in a fresh process, MAE pretraining after it, every other stage
    after others than in run A (for pretraining: after RC-MAE, not after the supervised ViT)."""
    a, _, c = runs
    same_outputs(a, c, stage)


def test_the_outputs_are_not_trivially_equal(runs):
    """The comparisons see real content: trained weights moved, metrics are numbers."""
    a, _, _ = runs
    mae = torch.load(a / "mae.pt", weights_only=False)
    assert len(mae["history"]) == 2 and np.isfinite(mae["history"][-1]["loss"])
    assert 0 <= json.loads((a / "finetune.json").read_text())["test_top1"] <= 1
    assert np.isfinite(json.loads((a / "hessian.json").read_text())["top_eigenvalues"][0])
    with xr.open_zarr(a / "surface.zarr") as surface:
        assert surface.loss.shape == (3, 3) and np.isfinite(surface.loss.values).all()
