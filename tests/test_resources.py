"""Resources a run needs and may lack: a GPU where the config asks for cuda, and room (and
permission) to write results. Each failure is one clear line naming the setting or the path
and the reason; a failed write leaves no partial file and a previous result whole.

A full disk is a real one where this machine allows it: a 64 KiB tmpfs (root and `mount`);
elsewhere those tests skip and `test_a_failing_write_without_mount` covers the logic."""
import errno
import gc
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from conftest import ROOT, validated
from vitlandscape import cli, configcheck, devices
from vitlandscape.landscape import tiles
from vitlandscape.storage import checkpoints, outputs


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def mounted(tmp_path, options: str) -> Path:
    """A fresh tmpfs with `options` under tmp_path, or a skip where mounting is not allowed."""
    where = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    where.mkdir()
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if run.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({run.stderr.strip()}); see test_a_failing_write_without_mount")
    return where


def unmount(where: Path) -> None:
    """Unmount; a file torch left open in a failed save's traceback is closed by collecting it."""
    gc.collect()
    if subprocess.run(["umount", str(where)], capture_output=True).returncode:
        subprocess.run(["umount", "--lazy", str(where)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB file system: small results fit, big ones run out of space mid-write."""
    where = mounted(tmp_path, "size=64k")
    yield where
    unmount(where)


@pytest.fixture
def read_only(tmp_path):
    """A read-only folder that stops root as well (chmod does not)."""
    where = mounted(tmp_path, "ro,size=64k")
    yield where
    unmount(where)


# --- cuda without a GPU --------------------------------------------------------------------------

def test_config_check_refuses_cuda_without_a_gpu_naming_each_key(default_config, no_gpu):
    config = validated({**default_config, "device": "cuda", "landscape": {**default_config.get("landscape", {}),
                                                                           "device": "cuda"}})
    found = configcheck.device_problems(config)
    assert [line.split(":")[0] for line in found] == ["device", "landscape.device"]
    assert all("'cuda' requested, but no GPU is visible to torch on this machine (torch.cuda.is_available() is "
               "False); expected cpu or auto here, or run on a GPU node" in line for line in found), found


def test_config_check_passes_cpu_and_cuda_with_a_gpu(default_config, monkeypatch):
    config = validated({**default_config, "device": "cpu"})
    assert configcheck.device_problems(config) == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert configcheck.device_problems(validated({**default_config, "device": "cuda"})) == []


def test_config_check_imports_no_torch_unless_cuda_is_asked_for():
    script = ("import sys, yaml; from vitlandscape import configcheck; from snakemake.utils import validate; "
              f"c = yaml.safe_load(open({str(ROOT / 'config/config.yaml')!r})); c['device'] = 'cpu'; "
              f"validate(c, {str(ROOT / 'config/schema.yaml')!r}); "
              "assert configcheck.device_problems(c) == []; print('torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "workflow")})
    assert run.stdout.strip() == "False"


def test_job_refuses_cuda_without_a_gpu_naming_the_key(no_gpu):
    with pytest.raises(devices.DeviceError) as caught:
        devices.resolve("cuda", "landscape.device")
    assert str(caught.value) == ("landscape.device: 'cuda' requested, but torch sees no CUDA device on this machine "
                                 "(torch.cuda.is_available() is False); use cpu, or run on a GPU node")
    assert devices.resolve("auto") == torch.device("cpu") and devices.resolve("cpu") == torch.device("cpu")


def test_cli_says_which_setting_asked_for_cuda(no_gpu, tmp_path):
    with pytest.raises(SystemExit) as caught:
        cli.main(["pretrain", "--settings", "{}", "--data", str(tmp_path / "d.pt"), "--out", str(tmp_path / "c.pt"),
                  "--device", "cuda"])
    assert str(caught.value).startswith("vitlandscape pretrain: device: 'cuda' requested, but torch sees no CUDA")
    assert list(tmp_path.iterdir()) == []


# --- a full disk ---------------------------------------------------------------------------------

def netcdf(n: int) -> xr.Dataset:
    return xr.Dataset({"loss": (("alpha", "beta"), np.random.default_rng(n).random((n, n)))},
                      coords={"alpha": np.arange(n, dtype=float), "beta": np.arange(n, dtype=float)})


# writer, result name, a small result that fits in 64 KiB, a big one that does not
WRITERS = {
    "write_json": (outputs.write_json, "r.json", {"a": 1}, {"a": list(range(40000))}),
    "write_netcdf": (outputs.write_netcdf, "r.nc", netcdf(4), netcdf(200)),
    "atomic_save": (checkpoints.atomic_save, "r.pt", {"w": torch.ones(4)}, {"w": torch.randn(40000)}),
    "write_zarr (assemble)": (lambda ds, out: tiles.write_zarr(ds, out, chunks=(ds.alpha.size, ds.beta.size)),
                              "r.zarr", netcdf(4), netcdf(200)),
}


def snapshot(path: Path) -> dict:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return {str(f.relative_to(path.parent)): f.read_bytes() for f in files if f.is_file()}


@pytest.mark.parametrize("writer", WRITERS)
def test_a_full_disk_leaves_no_partial_file_and_the_previous_result_whole(small_disk, writer):
    write, name, small, big = WRITERS[writer]
    target = small_disk / "results" / name
    write(small, target)
    before = snapshot(target)
    with pytest.raises(outputs.OutputError) as caught:
        write(big, target)
    assert caught.value.errno == errno.ENOSPC
    assert str(caught.value) == f"cannot write {target}: No space left on device"
    assert sorted(p.name for p in target.parent.iterdir()) == [name]  # no temporary left behind
    assert snapshot(target) == before


@pytest.mark.parametrize("writer", ["write_json", "atomic_save"])
def test_a_full_disk_before_any_result_leaves_nothing(small_disk, writer):
    write, name, _, big = WRITERS[writer]
    with pytest.raises(outputs.OutputError, match="No space left on device"):
        write(big, small_disk / name)
    assert list(small_disk.iterdir()) == []


def test_a_failing_write_without_mount(tmp_path, monkeypatch):
    """The same promise where no tmpfs can be mounted: the write stops half-way with ENOSPC."""
    target = tmp_path / "r.json"
    outputs.write_json({"good": True}, target)

    def half_then_full(self, text):
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(outputs.OutputError, match=f"cannot write {target}: No space left on device"):
        outputs.write_json({"good": False}, target)
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"good": True} and [p.name for p in tmp_path.iterdir()] == ["r.json"]


# --- an unwritable folder ------------------------------------------------------------------------

def test_a_file_where_the_results_folder_should_be(tmp_path):
    (tmp_path / "results").write_text("not a folder")
    target = tmp_path / "results" / "metrics" / "m.json"
    with pytest.raises(outputs.OutputError) as caught:
        outputs.write_json({"a": 1}, target)
    assert str(caught.value) == f"cannot write {target}: {tmp_path / 'results'} is a file, not a folder"


def test_a_read_only_results_folder(read_only):
    with pytest.raises(outputs.OutputError) as caught:
        checkpoints.atomic_save({"w": torch.ones(2)}, read_only / "c.pt")
    assert caught.value.errno == errno.EROFS
    assert str(caught.value) == f"cannot write {read_only / 'c.pt'}: Read-only file system"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod; test_a_read_only_results_folder covers it")
def test_a_results_folder_without_write_permission(tmp_path):
    (tmp_path / "results").mkdir(mode=0o555)
    with pytest.raises(outputs.OutputError, match="Permission denied"):
        outputs.write_json({"a": 1}, tmp_path / "results" / "m.json")


# --- the command line: one line, exit status 1, nothing else swallowed ----------------------------

def test_cli_reports_a_full_disk_in_one_line(small_disk, tmp_path):
    out, settings = small_disk / "config.yaml", tmp_path / "settings.json"
    settings.write_text(json.dumps({"x": list(range(40000))}))
    run = subprocess.run([sys.executable, "-m", "vitlandscape", "write-config", "--settings", f"@{settings}",
                          "--out", str(out)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "workflow")})
    assert run.returncode == 1
    assert run.stderr == f"vitlandscape write-config: cannot write {out}: No space left on device\n"


def test_cli_reports_an_unwritable_result_and_keeps_other_errors(tmp_path, monkeypatch):
    (tmp_path / "results").write_text("not a folder")
    out = tmp_path / "results" / "c.yaml"
    with pytest.raises(SystemExit) as caught:
        cli.main(["write-config", "--settings", "{}", "--out", str(out)])
    assert str(caught.value) == (f"vitlandscape write-config: cannot write {out}: {tmp_path / 'results'} is a file, "
                                 f"not a folder")

    def missing(config, path):
        open(tmp_path / "absent" / "input.json")

    monkeypatch.setattr(outputs, "write_yaml", missing)
    with pytest.raises(FileNotFoundError):  # not a write: the traceback stays
        cli.main(["write-config", "--settings", "{}", "--out", str(out)])
