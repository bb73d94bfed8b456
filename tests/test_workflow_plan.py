"""What the workflow plans (dry runs, no job runs): a model given as a checkpoint skips training."""
import argparse
import copy

import pytest
import torch
import yaml

from vitlandscape.models.arch import build_mae
from conftest import ROOT, planned_jobs

pytestmark = pytest.mark.subprocess


def plan(tmp_path, config: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return planned_jobs(tmp_path, "--configfile", str(path), snakefile_dir=ROOT)


def test_a_checkpoint_skips_pretraining(tmp_path, default_config):
    ckpt = tmp_path / "mae_visualize_vit_tiny.pth"
    arch = default_config["models"]["mae"]["arch"]
    torch.save({"model": build_mae(arch).state_dict(), "args": argparse.Namespace(norm_pix_loss=False)}, ckpt)
    config = copy.deepcopy(default_config)
    config["models"]["mae"]["checkpoint"] = str(ckpt)
    jobs = plan(tmp_path, config)
    pretrained = {w["model"] for rule, w in jobs if rule == "pretrain"}
    assert pretrained == {"rcmae", "sup"}
    assert {w["stage"] for rule, w in jobs if rule == "downstream" and w["model"] == "mae"} == {"probe", "finetune"}
    assert ("directions", {"model": "mae", "objective": "pretext"}) in jobs

    full = plan(tmp_path, default_config)
    assert {w["model"] for rule, w in full if rule == "pretrain"} == {"mae", "rcmae", "sup"}
    assert len(full) == len(jobs) + 1
