"""config/paper.yaml as shipped: with its checkpoint and data paths filled by fakes made
here (the released key layouts at full size, every tensor a view of one zero), the workflow
plans the paper's jobs."""
import argparse

import pytest
import torch
import yaml

from conftest import ROOT, planned_jobs
from vitlandscape.models.arch import build_mae
from vitlandscape.models.classifier import build_classifier, encoder_state

pytestmark = pytest.mark.subprocess


def hollow(model) -> dict:
    """The model's state dict at full size, every tensor a view of one zero (a few bytes on disk)."""
    zero = torch.zeros((), device="cpu")
    return {k: zero.expand(v.shape) for k, v in model.state_dict().items()}


def fake_release(workdir):
    """Every file paper.yaml (and paper_visualize.yaml) names, in its release layout and sizes."""
    (workdir / "data/imagenet/train/n01440764").mkdir(parents=True)
    ckpts = workdir / "checkpoints"
    ckpts.mkdir()
    with torch.device("meta"):
        mae, mae_large = build_mae("mae_vit_base_patch16"), build_mae("mae_vit_large_patch16")
        finetuned = build_classifier("vit_base_patch16", 1000, "finetune", global_pool=True)
        deit = build_classifier("vit_base_patch16", 1000, "supervised")
    mae, mae_large, finetuned, deit = hollow(mae), hollow(mae_large), hollow(finetuned), hollow(deit)
    norm_pix = argparse.Namespace(norm_pix_loss=True)
    torch.save({"model": mae, "args": norm_pix}, ckpts / "mae_pretrain_vit_base_full.pth")
    torch.save({"model": encoder_state(mae), "args": norm_pix}, ckpts / "mae_pretrain_vit_base.pth")
    torch.save({"student": {f"module.{k}": v for k, v in mae.items()},
                "teacher": {f"module.{k}": v for k, v in mae.items()}}, ckpts / "rcmae_pretrain_vit_base.pth")
    torch.save({"model": finetuned}, ckpts / "mae_finetuned_vit_base.pth")
    torch.save({"model": {f"module.{k}": v for k, v in finetuned.items()}}, ckpts / "rcmae_finetuned_vit_base.pth")
    torch.save({"model": deit}, ckpts / "deit_base_patch16_224-b5f2ef4d.pth")
    for size, state in (("base", mae), ("large", mae_large)):
        torch.save({"model": state, "args": argparse.Namespace(norm_pix_loss=False)},
                   ckpts / f"mae_visualize_vit_{size}.pth")


def count(jobs, rule):
    return sum(1 for r, _ in jobs if r == rule)


def test_paper_config_plans_the_papers_jobs(tmp_path):
    fake_release(tmp_path)
    paper = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    tiles_per_surface = -(-paper["landscape"]["alpha"][2] // paper["landscape"]["tile"][0]) * \
        -(-paper["landscape"]["beta"][2] // paper["landscape"]["tile"][1])
    assert tiles_per_surface == 9
    jobs = planned_jobs(tmp_path, "--configfile", str(ROOT / "config/paper.yaml"), snakefile_dir=ROOT)
    surfaces = {(w["model"], w["objective"]) for r, w in jobs if r == "assemble"}
    assert surfaces == {("mae", "pretext"), ("mae", "probe"), ("rcmae", "pretext"), ("rcmae", "probe"),
                        ("sup", "supervised")}
    assert count(jobs, "surface_tile") == 5 * tiles_per_surface
    assert count(jobs, "pretrain") == 0  # every model is a release
    assert sorted((w["model"], w["stage"]) for r, w in jobs if r == "downstream") == [("mae", "probe"),
                                                                                       ("rcmae", "probe")]
    assert sorted((w["model"], w["stage"]) for r, w in jobs if r == "evaluate_given") == [
        ("mae", "finetune"), ("rcmae", "finetune"), ("sup", "supervised")]
    assert count(jobs, "compare_figures") == 4 and count(jobs, "interpolate") == 1

    with_vis = planned_jobs(tmp_path, "--configfile", str(ROOT / "config/paper.yaml"),
                            str(ROOT / "config/paper_visualize.yaml"), snakefile_dir=ROOT)
    added = {(w["model"], w["objective"]) for r, w in with_vis if r == "assemble"} - surfaces
    assert added == {("mae_vis_base", "pretext"), ("mae_vis_large", "pretext")}
    assert count(with_vis, "surface_tile") == 7 * tiles_per_surface
    assert count(with_vis, "downstream") == 2 and count(with_vis, "evaluate_given") == 3


def test_paper_config_refuses_the_encoder_only_release_for_pretext(tmp_path):
    fake_release(tmp_path)
    paper = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    paper["models"]["mae"]["checkpoint"] = "checkpoints/mae_pretrain_vit_base.pth"
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(paper))
    from conftest import snakemake
    run = snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "wrong.yaml"), snakefile_dir=ROOT)
    assert run.returncode != 0
    assert "models.mae.checkpoint: checkpoint checkpoints/mae_pretrain_vit_base.pth is an MAE encoder without " \
           "its decoder (mae_encoder)" in run.stdout + run.stderr
