"""What the workflow plans (dry runs, no job runs): a model given as a checkpoint skips training."""
import argparse
import copy

import pytest
import torch
import yaml

from conftest import ROOT, planned_jobs, snakemake
from vitlandscape.models.arch import build_mae

pytestmark = pytest.mark.subprocess


def plan(tmp_path, config: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return planned_jobs(tmp_path, "--configfile", str(path), snakefile_dir=ROOT)


def test_a_checkpoint_skips_pretraining(tmp_path, default_config):
    ckpt = tmp_path / "mae_visualize_vit_tiny.pth"
    arch = default_config["models"]["mae"]["arch"]
    torch.save({"model": build_mae(arch).state_dict(), "args": argparse.Namespace(norm_pix_loss=False)}, ckpt)
    trained = copy.deepcopy(default_config)
    trained["trajectories"].update(models=["rcmae"], compare=[])  # a given checkpoint has no training to replay
    config = copy.deepcopy(trained)
    config["models"]["mae"]["checkpoint"] = str(ckpt)
    jobs = plan(tmp_path, config)
    pretrained = {w["model"] for rule, w in jobs if rule == "pretrain"}
    assert pretrained == {"rcmae", "sup"}
    assert {w["stage"] for rule, w in jobs if rule == "downstream" and w["model"] == "mae"} == {"probe", "finetune"}
    assert ("directions", {"model": "mae", "objective": "pretext"}) in jobs

    full = plan(tmp_path, trained)
    assert {w["model"] for rule, w in full if rule == "pretrain"} == {"mae", "rcmae", "sup"}
    assert len(full) == len(jobs) + 1


def test_given_probe_finetune_and_supervised_checkpoints_skip_training(tmp_path, default_config):
    """Released classifiers are evaluated for the accuracy table instead of being trained."""
    from vitlandscape.models.classifier import build_classifier
    arch = default_config["models"]["mae"]["arch"]
    sup_arch = default_config["models"]["sup"]["arch"]
    torch.save({"model": build_classifier(arch, 10, "probe").state_dict()}, tmp_path / "linprobe.pth")
    torch.save({"model": build_classifier(arch, 10, "finetune", global_pool=True).state_dict()},
               tmp_path / "finetuned.pth")
    torch.save(build_classifier(sup_arch, 10, "supervised").state_dict(), tmp_path / "deit.pth")
    config = copy.deepcopy(default_config)
    mae = config["models"]["mae"]  # its stage settings are YAML aliases shared with rcmae: copy them
    mae["probe"] = {**mae["probe"], "checkpoint": str(tmp_path / "linprobe.pth")}
    mae["finetune"] = {**mae["finetune"], "checkpoint": str(tmp_path / "finetuned.pth")}
    config["models"]["sup"]["checkpoint"] = str(tmp_path / "deit.pth")
    jobs = plan(tmp_path, config)
    assert {w["model"] for rule, w in jobs if rule == "pretrain"} == {"mae", "rcmae"}
    assert {(w["model"], w["stage"]) for rule, w in jobs if rule == "downstream"} == {("rcmae", "probe"),
                                                                                       ("rcmae", "finetune")}
    assert sorted((w["model"], w["stage"]) for rule, w in jobs if rule == "evaluate_given") == [
        ("mae", "finetune"), ("mae", "probe"), ("sup", "supervised")]
    assert ("directions", {"model": "mae", "objective": "probe"}) in jobs
    assert ("directions", {"model": "sup", "objective": "supervised"}) in jobs


def test_metric_jobs_follow_the_metrics_switches(tmp_path, default_config):
    """Hessian and flatness jobs per surface by default; the ratio map only when enabled;
    without Hessian there is no spectrum figure (and no Hessian measure may be claimed)."""
    surfaces = [("mae", "pretext"), ("mae", "probe"), ("rcmae", "pretext"), ("rcmae", "probe"), ("sup", "supervised")]

    def per_surface(jobs, rule):
        return sorted((w["model"], w["objective"]) for r, w in jobs if r == rule)

    jobs = plan(tmp_path, default_config)
    assert per_surface(jobs, "hessian") == per_surface(jobs, "flatness") == sorted(surfaces)
    assert per_surface(jobs, "ratio_map") == [] and ("spectrum_figure", {}) in jobs
    config = copy.deepcopy(default_config)
    config["metrics"]["ratio_map"] = {"enabled": True, "alpha": [-0.5, 0.5, 3], "beta": [-0.5, 0.5, 3]}
    config["metrics"]["hessian"]["enabled"] = False
    config["metrics"]["claims"] = [c for c in config["metrics"]["claims"] if c["name"] == "mae_basin_wider_than_supervised"]
    jobs = plan(tmp_path, config)
    assert per_surface(jobs, "ratio_map") == per_surface(jobs, "ratio_map_figure") == sorted(surfaces)
    assert per_surface(jobs, "hessian") == [] and "spectrum_figure" not in {r for r, _ in jobs}
    assert per_surface(jobs, "flatness") == sorted(surfaces) and ("metrics_tables", {}) in jobs


def test_trust_checkpoint_reaches_the_jobs_of_that_model_only(tmp_path, default_config):
    """The flag is in the settings of the trusting model's jobs (and of an interpolation ending
    there) and nowhere else, so that models which do not set it keep their settings."""
    config = copy.deepcopy(default_config)
    config["models"]["rcmae"]["trust_checkpoint"] = True
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run = snakemake(tmp_path, "-n", "-p", "--configfile", str(path), snakefile_dir=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    # the jobs of one model (write-config's settings are the whole config)
    commands = [line.split("Shell command: ", 1)[1] for line in run.stdout.splitlines()
                if "Shell command: vitlandscape " in line and "write-config" not in line and '"name":' in line]
    trusting = [c for c in commands if '"trust_checkpoint":true' in c or '"end_trust_checkpoint":true' in c]
    assert trusting and all('"name":"rcmae"' in c or '"end_model":"rcmae"' in c for c in trusting)
    for c in commands:
        if '"name":"rcmae"' in c and "--settings" in c:
            assert '"trust_checkpoint":true' in c, c[:200]
    assert any("vitlandscape interpolate" in c and '"end_trust_checkpoint":true' in c for c in trusting)


def test_cuda_without_a_gpu_stops_a_local_run_before_any_job(tmp_path, default_config):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config = copy.deepcopy(default_config)
    config["landscape"]["device"] = "cuda"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run = snakemake(tmp_path, "--cores", "1", "--configfile", str(path), snakefile_dir=ROOT)
    assert run.returncode != 0
    assert "landscape.device: 'cuda' requested, but no GPU is visible to torch" in run.stdout + run.stderr
    assert not (tmp_path / "results").exists()
