"""Peak memory of the streamed imagefolder stages does not grow with the data set.

Each stage runs as `python -m vitlandscape ...` in a child process that reports its own
peak resident set (ru_maxrss) when it exits, once on a folder of 160 training images and
once on one of 4,000 (both several full batches). The decoded training split of the large
folder is 4000 x 3 x 128 x 128 = 197 MB as uint8 (786 MB as the normalised floats the old
loader kept); the evaluation subset (64 images, 3 MB) and a batch (64 images, 13 MB as
floats) are the same in both runs. Holding the training split, even as uint8, raises the
peak by about 197 MB; streaming adds ImageFolder's file list (4,000 paths, about 1 MB).
The limit on the growth, a third of the decoded split (66 MB), sits far from both.
Measured on a 2-core machine: growth +1 MB (prepare-data), +3 MB (pretrain) streaming;
+191 MB and +472 MB with the split decoded into memory. Absolute peaks (about 0.9-1 GB)
are mostly torch + timm, so the runs are compared with each other, not with a fixed number.
glibc's malloc raises its mmap threshold as large buffers are freed, after which freed
batches stay in the heap and RSS creeps up with the step count (+39 MB over 62 steps);
the children fix the threshold so that RSS follows live memory. Workers are 0, so every
byte the stage touches is in the one process measured.
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_ARCH, make_image_folder, model_settings

pytestmark = pytest.mark.subprocess

SIZE, EVAL, BATCH = 128, 64, 64
DECODED_SPLIT = 4000 * 3 * SIZE * SIZE  # bytes, uint8
LIMIT = DECODED_SPLIT // 3

# `python -m vitlandscape ARGS`, then the process's own peak RSS (kB on Linux) on stdout.
RUN_AND_REPORT = """
import resource, runpy, sys
sys.argv[0] = "vitlandscape"
try:
    runpy.run_module("vitlandscape", run_name="__main__", alter_sys=True)
finally:
    print("peak_rss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss(*args: str) -> int:
    """Bytes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "workflow"), "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    run = subprocess.run([sys.executable, "-c", RUN_AND_REPORT, *args], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return int(run.stdout.rsplit("peak_rss_kb", 1)[1]) * 1024


def stage_peaks(tmp_path, name: str, per_class: int) -> dict:
    root = make_image_folder(tmp_path / name, classes=4, train=per_class, val=2, size=(150, 200))
    data = {"dataset": "imagefolder", "path": str(root), "image_size": SIZE, "eval_samples": EVAL, "seed": 0,
            "test_fraction": 0.2}
    arch = {**TINY_ARCH, "img_size": SIZE, "patch_size": 16}
    model = model_settings("mae", arch=arch, pretrain={"epochs": 1, "batch_size": BATCH, "lr": 1e-3,
                                                       "weight_decay": 0.05, "warmup_epochs": 0})
    prepared = tmp_path / f"{name}.pt"
    return {"prepare-data": peak_rss("prepare-data", "--settings", json.dumps(data), "--out", str(prepared)),
            "pretrain": peak_rss("pretrain", "--settings", json.dumps(model), "--data", str(prepared),
                                 "--out", str(tmp_path / f"{name}_mae.pt"), "--device", "cpu", "--workers", "0")}


def test_peak_memory_does_not_grow_with_the_training_split(tmp_path):
    small = stage_peaks(tmp_path, "small", per_class=40)
    large = stage_peaks(tmp_path, "large", per_class=1000)
    mb = 1e6
    print(f"\ndecoded training split {DECODED_SPLIT / mb:.0f} MB (uint8), limit on the growth {LIMIT / mb:.0f} MB")
    for stage in small:
        print(f"{stage}: peak RSS {small[stage] / mb:.0f} MB (160 images), {large[stage] / mb:.0f} MB (4000 images), "
              f"growth {(large[stage] - small[stage]) / mb:+.0f} MB")
    for stage in small:
        assert large[stage] - small[stage] < LIMIT, (stage, small[stage], large[stage])
