"""Shared fixtures: tiny architectures, tiny data sets, validated configs."""
import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

TINY_ARCH = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 4,
             "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2}


# torch threads of the tests' own processes: 1, or VITLANDSCAPE_TEST_THREADS (`make test-other-bits`
# sets 2, to try the reduction orders of another thread count; tests/README.md).
TEST_THREADS = int(os.environ.get("VITLANDSCAPE_TEST_THREADS", "1"))


@pytest.fixture(autouse=True)
def _test_threads():
    torch.set_num_threads(TEST_THREADS)


def validated(config: dict) -> dict:
    """Validate against config/schema.yaml with defaults filled, as the Snakefile does."""
    from snakemake.utils import validate
    config = copy.deepcopy(config)
    validate(config, str(ROOT / "config" / "schema.yaml"))
    return config


@pytest.fixture
def default_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


@pytest.fixture
def npz_dataset(tmp_path) -> Path:
    """A small labelled npz data set: 3 classes of noisy bars (uint8 N,H,W,C)."""
    rng = np.random.default_rng(0)
    n, size = 96, 16
    labels = np.arange(n) % 3
    images = rng.integers(0, 60, size=(n, size, size, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, :, 4 * label:4 * label + 4] = 220  # a vertical bar whose position is the class
    path = tmp_path / "bars.npz"
    np.savez(path, images=images, labels=labels)
    return path


def prepared_noise(root: Path, images: int, size: int, classes: int, eval_samples: int) -> Path:
    """Uniform-noise images with cyclic labels as an npz data set, prepared at their own size
    (a quarter held out for test): `root/data.pt`."""
    from vitlandscape.data import prepare
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", images=rng.integers(0, 256, size=(images, size, size, 3), dtype=np.uint8),
             labels=np.arange(images) % classes)
    prepare.prepare_data({"dataset": "npz", "path": str(root / "data.npz"), "image_size": size,
                          "eval_samples": eval_samples, "seed": 0, "test_fraction": 0.25}, root / "data.pt")
    return root / "data.pt"


@pytest.fixture
def data_file(tmp_path, npz_dataset) -> Path:
    """The npz data set prepared (16 px, 32 evaluation images, a quarter held out for test)."""
    from vitlandscape.data import prepare
    path = tmp_path / "data.pt"
    prepare.prepare_data({"dataset": "npz", "path": str(npz_dataset), "image_size": 16,
                          "eval_samples": 32, "seed": 0, "test_fraction": 0.25}, path)
    return path


def make_image_folder(root: Path, classes: int, train: int, val: int, size=(30, 40), seed: int = 0) -> Path:
    """A fake ImageNet layout: `train/` and `val/` with `train` / `val` JPEGs of `size` (h, w)
    per class; each class is noise plus a bright bar at its own height, so it can be learnt."""
    rng = np.random.default_rng(seed)
    h, w = size
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"class{c:03d}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
                top = c * h // classes
                pixels[top:top + max(1, h // (2 * classes))] = 230
                Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def model_settings(method="mae", **overrides) -> dict:
    """A complete (schema-defaulted) model entry, as the rules pass to the stages."""
    entry = {"method": method, "arch": dict(TINY_ARCH) if method != "supervised" else
             {k: TINY_ARCH[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads")},
             "pretrain": {"epochs": 2, "batch_size": 32}, "probe": {"epochs": 2, "batch_size": 32},
             "finetune": {"epochs": 1, "batch_size": 32}}
    config = validated({"models": {"m": entry}})
    return {"name": "m", **config["models"]["m"], **overrides}


def snakemake(workdir: Path, *args: str, snakefile_dir: Path | None = None) -> subprocess.CompletedProcess:
    """Run Snakemake with this interpreter; the Snakefile is in `snakefile_dir` (default: workdir)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    directory = [] if snakefile_dir is None else ["--directory", str(workdir)]
    return subprocess.run([sys.executable, "-m", "snakemake", *args, *directory], cwd=snakefile_dir or workdir,
                          env=env, capture_output=True, text=True, timeout=1800)


def copy_workflow(dest: Path, *extra: str) -> Path:
    """A copy of the workflow (Snakefile, workflow/, config/, envs/ and `extra` folders) in
    `dest`, so that a test's edits and results cannot touch the repository."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "Snakefile", dest)
    for folder in ("workflow", "config", "envs", *extra):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def summary(workdir: Path) -> list[dict]:
    """`snakemake --summary` as one dict per output (output_file, rule, status, ...)."""
    run = snakemake(workdir, "--summary")
    assert run.returncode == 0, run.stderr[-3000:]
    header, *rows = [line.split("\t") for line in run.stdout.splitlines() if "\t" in line]
    return [dict(zip(header, row)) for row in rows]


def planned_jobs(workdir: Path, *args: str, **kwargs) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job a dry run would execute."""
    run = snakemake(workdir, "-n", *args, **kwargs)
    assert run.returncode == 0, run.stdout + run.stderr
    jobs = []
    # jobs of a group (tiles) are printed indented under the group's header
    for block in re.split(r"\n(?=[ \t]*(?:local)?rule \w+:)", run.stdout):
        head = re.match(r"\s*(?:local)?rule (\w+):", block)
        if not head:
            continue
        found = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        wildcards = dict(kv.split("=", 1) for kv in found.group(1).split(", ")) if found else {}
        jobs.append((head.group(1), wildcards))
    return jobs
