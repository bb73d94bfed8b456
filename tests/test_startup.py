"""Jobs that only read and write files import neither torch nor timm (2 to 4 s of every job's
start-up on this project's machine): assembly, figures, the metrics tables, the config."""
import json
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from conftest import ROOT
from vitlandscape.landscape import grid, tiles
from vitlandscape.storage.outputs import sha256, write_netcdf

pytestmark = pytest.mark.subprocess

ALPHA, BETA, TILE = [-1.0, 1.0, 5], [-1.0, 1.0, 5], [3, 3]
SETTINGS = {"name": "m", "method": "mae", "objective": "pretext",
            "landscape": {"alpha": ALPHA, "beta": BETA, "tile": TILE}}


def tile_files(root) -> list:
    """The tiles of a bowl-shaped surface with the provenance assembly expects."""
    (root / "ckpt.pth").write_bytes(b"weights")
    (root / "dirs.safetensors").write_bytes(b"directions")
    attrs = {"model": "m", "method": "mae", "objective": "pretext", "eval_samples": 8,
             "checkpoint_sha256": sha256(root / "ckpt.pth"), "directions_sha256": sha256(root / "dirs.safetensors"),
             "grid": grid.signature(ALPHA, BETA, TILE), "config_hash": tiles.config_hash(SETTINGS),
             "normalization": "filter", "perturb_1d": 0, "perturb_frozen": 0}
    files = []
    for name in grid.tile_names(ALPHA, BETA, TILE):
        sa, sb = grid.tile_slices(name, ALPHA, BETA, TILE)
        a, b = np.meshgrid(grid.axis(ALPHA)[sa], grid.axis(BETA)[sb], indexing="ij")
        files.append(root / f"{name}.nc")
        write_netcdf(tiles.tile_dataset(1 + a ** 2 + b ** 2, np.full(a.shape, np.nan), grid.axis(ALPHA)[sa],
                                        grid.axis(BETA)[sb], attrs), files[-1])
    return files


def test_file_stages_import_neither_torch_nor_timm(tmp_path):
    files = tile_files(tmp_path)
    stages = [
        ["assemble", "--settings", json.dumps(SETTINGS), "--checkpoint", str(tmp_path / "ckpt.pth"),
         "--directions", str(tmp_path / "dirs.safetensors"), "--tiles", *map(str, files),
         "--out", str(tmp_path / "s.zarr")],
        ["plot-surface", "--settings", json.dumps({"dpi": 50, "formats": ["png"]}), "--surface",
         str(tmp_path / "s.zarr"), "--prefix", str(tmp_path / "fig/m"), "--html", str(tmp_path / "fig/m.html"),
         "--vts", str(tmp_path / "fig/m.vts")],
        ["metrics-tables", "--settings", json.dumps({"relative_rises": [0.5], "absolute_rises": [0.1],
                                                     "sharpness_rho": [0.5], "claims": []}),
         "--surfaces", str(tmp_path / "s.zarr"), "--out-dir", str(tmp_path / "metrics")],
        ["write-config", "--settings", json.dumps({"models": {}}), "--out", str(tmp_path / "config.yaml")],
    ]
    script = ("import sys\nfrom vitlandscape.cli import main\n"
              f"for argv in {stages!r}:\n"
              "    main(argv)\n"
              "    loaded = [m for m in ('torch', 'timm') if m in sys.modules]\n"
              "    assert not loaded, f'{argv[0]} imported {loaded}'\n")
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(ROOT / "workflow"), "PATH": "", "MPLBACKEND": "Agg"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert xr.open_zarr(tmp_path / "s.zarr").loss.sel(alpha=0.0, beta=0.0).item() == 1.0
    assert (tmp_path / "fig/m_3d.png").stat().st_size > 0 and (tmp_path / "metrics/summary.csv").exists()
    assert (tmp_path / "config.yaml").read_text() == "models: {}\n"


def test_data_and_accuracy_stages_import_torch_but_not_timm(tmp_path):
    """Preparing the data and collecting the accuracy table need torch (tensor files), not the
    models: timm, with torchvision and torch._dynamo behind it, would add about 2 s a job."""
    probe = {"model": "m", "method": "mae", "stage": "probe", "test_top1": 0.5, "random_init_test_top1": 0.25}
    (tmp_path / "probe.json").write_text(json.dumps(probe))
    stages = [
        ["prepare-data", "--settings", json.dumps({"dataset": "digits", "image_size": 8, "eval_samples": 4,
                                                   "seed": 0, "test_fraction": 0.2}),
         "--out", str(tmp_path / "digits.pt")],
        ["accuracy-table", "--metrics", str(tmp_path / "probe.json"), "--out", str(tmp_path / "accuracy.csv")],
    ]
    script = ("import sys\nfrom vitlandscape.cli import main\n"
              f"for argv in {stages!r}:\n"
              "    main(argv)\n"
              "    loaded = [m for m in ('timm', 'torchvision') if m in sys.modules]\n"
              "    assert not loaded, f'{argv[0]} imported {loaded}'\n"
              "assert 'torch' in sys.modules\n")
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(ROOT / "workflow"), "PATH": ""})
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "digits.pt").stat().st_size > 0
    assert (tmp_path / "accuracy.csv").read_text().splitlines()[1].startswith("m,mae,0.5")
