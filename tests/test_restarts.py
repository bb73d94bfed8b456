"""Crashes and restarts: a job killed with SIGKILL, then the workflow rerun with
`--rerun-incomplete`, gives the surface (and checkpoint) of an uninterrupted run, bit for bit;
a truncated or foreign tile is named by `assemble`, never merged.

A reduced workflow (one tiny MAE, 2 epochs, a 5 x 5 grid in 2 x 2 tiles, 32 evaluation
images) runs once uninterrupted in a copy (the reference); every other case starts from a copy
of that finished run with some outputs removed, so only the jobs under test rerun. Kills use the
test hook VITLANDSCAPE_SIGKILL (vitlandscape/faults.py): `<point>@group` kills the job and
Snakemake with it (a crashed node: nothing cleans up, incomplete markers stay), so these runs
start Snakemake in a session of its own.
"""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from conftest import copy_workflow, snakemake

TARGET = "results/surfaces/mae/pretext.zarr"
TILES = "results/surfaces/mae/pretext/tiles"
CHECKPOINT = "results/checkpoints/mae/pretrain.pt"
CONFIG = {"data": {"dataset": "digits", "image_size": 16, "eval_samples": 32, "seed": 0},
          "models": {"mae": {"method": "mae",
                             "arch": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 4,
                                      "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2},
                             "pretrain": {"epochs": 2, "batch_size": 128, "lr": 1.5e-3, "warmup_epochs": 1}}},
          "landscape": {"alpha": [-1.0, 1.0, 5], "beta": [-1.0, 1.0, 5], "tile": [3, 3], "interpolations": []},
          "figures": {"compare": []}, "metrics": {"claims": []}}
# Attributes that may differ between two runs of the same surface (none today: paths are relative).
TIMING_OR_PATHS = set()


def run(workdir: Path, *args: str, kill: str | None = None) -> subprocess.CompletedProcess:
    """Snakemake on TARGET in a session of its own (so that `@group` kills it, not pytest)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("VITLANDSCAPE_SIGKILL", None)
    if kill:
        env["VITLANDSCAPE_SIGKILL"] = kill
    return subprocess.run([sys.executable, "-m", "snakemake", TARGET, "--cores", "2", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600, start_new_session=True)


def copy_of(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, symlinks=True)
    return dest


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def surface(workdir: Path) -> tuple[bytes, dict]:
    with xr.open_zarr(workdir / TARGET, consolidated=True) as ds:
        loss = np.ascontiguousarray(ds.loss.values)
        attrs = {k: v for k, v in ds.attrs.items() if k not in TIMING_OR_PATHS}
    return loss.tobytes(), attrs


def assert_same_surface(workdir: Path, reference: Path) -> None:
    loss, attrs = surface(workdir)
    ref_loss, ref_attrs = surface(reference)
    assert loss == ref_loss, "loss array differs from the uninterrupted run"
    assert attrs == ref_attrs


def incomplete(workdir: Path) -> list[str]:
    """Outputs Snakemake marks incomplete (it writes one marker per output of a started job)."""
    import base64
    folder = workdir / ".snakemake" / "incomplete"
    return sorted(base64.b64decode(p.name).decode() for p in folder.rglob("*") if p.is_file()) if folder.exists() \
        else []


def crashed(result: subprocess.CompletedProcess, group: bool, rule: str = "") -> None:
    """Snakemake ended non-zero: killed with its job (`group`), or reporting the killed job's `rule`."""
    if group:
        assert result.returncode == -signal.SIGKILL, result.stdout[-2000:] + result.stderr[-3000:]
    else:
        assert result.returncode != 0 and f"Error in rule {rule}:" in result.stderr, result.stderr[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("reference"))
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    result = run(workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert sorted(p.name for p in (workdir / TILES).glob("*.nc")) == ["a0_b0.nc", "a0_b1.nc", "a1_b0.nc", "a1_b1.nc"]
    return workdir


def test_tile_killed_halfway_then_rerun(reference, tmp_path):
    workdir = copy_of(reference, tmp_path / "w")
    shutil.rmtree(workdir / TARGET)
    (workdir / TILES / "a0_b0.nc").unlink()
    crashed(run(workdir, kill="tile:mae.pretext.a0_b0@group"), group=True)
    # the tile's temporary may remain; the tile itself must not exist, or be marked incomplete
    tile = workdir / TILES / "a0_b0.nc"
    assert not tile.exists() or str(tile.relative_to(workdir)) in incomplete(workdir)
    assert not (workdir / TARGET).exists()
    assert snakemake(workdir, "--unlock").returncode == 0
    result = run(workdir, "--rerun-incomplete")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_same_surface(workdir, reference)
    assert digest(tile) == digest(reference / TILES / "a0_b0.nc")


def test_tile_job_killed_alone_then_rerun(reference, tmp_path):
    """Only the job dies: Snakemake reports it, removes what it left, and the rerun completes."""
    workdir = copy_of(reference, tmp_path / "w")
    shutil.rmtree(workdir / TARGET)
    (workdir / TILES / "a1_b1.nc").unlink()
    result = run(workdir, kill="tile:mae.pretext.a1_b1")
    crashed(result, group=False, rule="surface_tile")
    assert not (workdir / TILES / "a1_b1.nc").exists() and not (workdir / TARGET).exists()
    result = run(workdir, "--rerun-incomplete")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_same_surface(workdir, reference)


def test_assemble_killed_mid_write_then_rerun(reference, tmp_path):
    workdir = copy_of(reference, tmp_path / "w")
    shutil.rmtree(workdir / TARGET)
    crashed(run(workdir, kill="assemble:write_zarr@group"), group=True)
    # the store was being written beside its final name: nothing half-written stands there
    assert not (workdir / TARGET).exists(), "a killed assembly left a store at the result's path"
    assert snakemake(workdir, "--unlock").returncode == 0
    result = run(workdir, "--rerun-incomplete")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_same_surface(workdir, reference)
    assert not list((workdir / TARGET).parent.glob(".*.tmp")), "the killed job's temporary store was left behind"


def test_pretrain_killed_mid_epoch_then_rerun(reference, tmp_path):
    workdir = copy_of(reference, tmp_path / "w")
    (workdir / CHECKPOINT).unlink()
    shutil.rmtree(workdir / TARGET)  # (a missing intermediate alone would not make Snakemake rerun it)
    result = run(workdir, kill="mae pretrain@step1")  # digits: 11 steps per epoch, so mid first epoch
    crashed(result, group=False, rule="pretrain")
    assert not (workdir / CHECKPOINT).exists()
    result = run(workdir, "--rerun-incomplete")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert digest(workdir / CHECKPOINT) == digest(reference / CHECKPOINT)
    assert_same_surface(workdir, reference)


def test_truncated_tile_is_named_not_merged(reference, tmp_path):
    workdir = copy_of(reference, tmp_path / "w")
    tile = workdir / TILES / "a0_b1.nc"
    data = tile.read_bytes()
    tile.write_bytes(data[:len(data) // 2])
    result = run(workdir)
    assert result.returncode != 0
    log = (workdir / "results/logs/assemble/mae/pretext.log").read_text()
    assert f"tile {TILES}/a0_b1.nc cannot be read (truncated or not a NetCDF file)" in log, log[-2000:]
    assert not (workdir / TARGET).exists()


def test_foreign_tile_is_named_not_merged(reference, tmp_path):
    workdir = copy_of(reference, tmp_path / "w")
    tile = workdir / TILES / "a1_b0.nc"
    # a tile of the same slot computed from another checkpoint (another run's file copied in)
    with xr.open_dataset(tile, engine="scipy") as ds:
        foreign = ds.load()
    foreign.attrs["checkpoint_sha256"] = "0" * 64
    foreign.loss.values[:] = 123.0
    other = tmp_path / "other.nc"
    foreign.to_netcdf(other, engine="scipy")
    time.sleep(0.01)
    shutil.copy(other, tile)  # newer than the store: Snakemake reruns assemble
    result = run(workdir)
    assert result.returncode != 0
    log = (workdir / "results/logs/assemble/mae/pretext.log").read_text()
    assert f"tile {TILES}/a1_b0.nc was computed with checkpoint_sha256='{'0' * 64}'" in log, log[-2000:]
    assert "refusing to mix it into" in log
    assert not (workdir / TARGET).exists()  # Snakemake removed the old store; no new one with the foreign tile
