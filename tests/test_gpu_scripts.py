"""The script kept ready for a lent GPU runs end to end on the CPU with a tiny model (bf16
autocast runs there too), so that a device session spends its minutes measuring, not debugging."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_ARCH

pytestmark = pytest.mark.subprocess


def test_gpu_bench_runs_on_the_cpu(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(ROOT / "workflow/scripts/gpu_bench.py"), "--device", "cpu",
                          "--arch", json.dumps(TINY_ARCH), "--images", "16", "--batch-size", "8", "--side", "2",
                          "--peak-tflops", "1.0", "--out", str(out)],
                         env={"PYTHONPATH": str(ROOT / "workflow"), "PATH": ""}, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [r["precision"] for r in result["rows"]] == ["fp32", "tf32", "bf16"]
    fp32, tf32, bf16 = result["rows"]
    assert fp32["max_relative_difference_to_fp32"] == 0 == tf32["max_relative_difference_to_fp32"]  # CPU: tf32 = fp32
    assert 0 < bf16["max_relative_difference_to_fp32"] < 1e-2
    for r in result["rows"]:
        assert r["efficiency"] == pytest.approx(r["engine_images_per_s"] / r["ceiling_images_per_s"])
        assert r["mfu"] == pytest.approx(r["achieved_tflops"] / 1.0)
        assert r["engine_points_per_s"] == pytest.approx(r["engine_images_per_s"] / 16)
    assert result["card"] == "cpu" and "bf16" in run.stdout


def test_gpu_train_bench_runs_on_the_cpu(tmp_path):
    out = tmp_path / "train_bench.json"
    run = subprocess.run([sys.executable, str(ROOT / "workflow/scripts/gpu_train_bench.py"), "--device", "cpu",
                          "--arch", json.dumps(TINY_ARCH), "--batch-size", "8", "--repeats", "1", "--out", str(out)],
                         env={"PYTHONPATH": str(ROOT / "workflow"), "PATH": ""}, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["card"] == "cpu" and result["batch"] == 8
    for stage in ("pretrain", "finetune"):
        assert result[f"{stage}_augmentation_images_per_s"] > 0
        assert result[f"{stage}_bf16_speedup"] == pytest.approx(
            result[f"{stage}_bf16_images_per_s"] / result[f"{stage}_fp32_images_per_s"])
    assert result["augmentation_device_vs_cpu"] == {"crop_max_abs_difference": 0.0, "flip_identical": True,
                                                    "rand_augment_max_level_difference": 0.0, "erasing_identical": True}
    assert "finetune bf16" in run.stdout
