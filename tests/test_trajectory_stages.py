"""The trajectory stages: a replayed training reproduces its checkpoint and keeps snapshots
exactly on schedule with a per-step curve; the PCA plane of the path follows the direction
contract and is centred on the checkpoint."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import model_settings
from vitlandscape.landscape import directions
from vitlandscape.landscape import stages as landscape_stages
from vitlandscape.models.arch import build_mae
from vitlandscape.storage import snapshots
from vitlandscape.train import stages as train_stages

EVERY = {"every": 3}


def replay(tmp_path, cfg, stage, data_file, checkpoint, schedule=EVERY, pretrained=None):
    out = tmp_path / stage
    meta = train_stages.trajectory(cfg, stage, schedule, data_file, checkpoint,
                                   snapshots_out=out / "snapshots.safetensors", curve_out=out / "curve.csv",
                                   pretrained=pretrained)
    steps, states, stored = snapshots.load_snapshots(out / "snapshots.safetensors")
    return meta, steps, states, stored, pd.read_csv(out / "curve.csv")


@pytest.mark.parametrize("method", ["mae", "rcmae", "supervised"])
def test_replayed_pretraining_reproduces_its_checkpoint_on_schedule(tmp_path, data_file, method):
    cfg = model_settings(method)
    ckpt = train_stages.pretrain(cfg, data_file, tmp_path / "pre.pt")
    meta, steps, states, stored, curve = replay(tmp_path, cfg, "pretrain", data_file, tmp_path / "pre.pt")
    # 72 training images in batches of 32: 2 full batches an epoch, 2 epochs
    assert meta["total_steps"] == 4 and steps == [0, 3, 4] and json.loads(stored["steps"]) == [0, 3, 4]
    assert meta["replay_difference"] == 0.0
    assert all(torch.equal(states[-1][k], ckpt["model"][k]) for k in ckpt["model"])
    # step 0 is the seeded initialisation; the weights then move
    torch.manual_seed(cfg["seed"])
    if method != "supervised":
        initial = build_mae(cfg["arch"], cfg["norm_pix_loss"]).state_dict()
        assert all(torch.equal(states[0][k], initial[k]) for k in initial)
    assert not torch.equal(states[0]["blocks.0.attn.qkv.weight"], states[1]["blocks.0.attn.qkv.weight"])
    assert list(curve["step"]) == list(range(4)) and list(curve["epoch"]) == [0, 0, 1, 1]
    assert (np.diff(curve["wall_s"]) > 0).all()
    # the checkpoint's per-epoch history is the mean of the curve's steps, epoch by epoch
    means = curve.groupby("epoch")["loss"].mean().to_numpy()
    np.testing.assert_allclose(means, [h["loss"] for h in ckpt["history"]], rtol=1e-12)
    np.testing.assert_allclose(curve.groupby("epoch")["lr"].last(), [h["lr"] for h in ckpt["history"]], rtol=1e-12)
    extra = {"mae": {"reconstruction_loss"}, "rcmae": {"reconstruction_loss", "consistency_loss", "momentum"},
             "supervised": set()}[method]
    assert set(curve.columns) == {"step", "epoch", "wall_s", "lr", "loss"} | extra
    if method == "mae":
        np.testing.assert_array_equal(curve["reconstruction_loss"], curve["loss"])
    if method == "rcmae":  # the optimised loss is the sum of its recorded parts
        total = curve["reconstruction_loss"] + cfg["consistency_weight"] * curve["consistency_loss"]
        np.testing.assert_allclose(curve["loss"], total, rtol=1e-6)
        assert (curve["momentum"] == cfg["ema_momentum"]).all()


def test_the_ema_momentum_follows_the_batch_when_asked(tmp_path, data_file):
    """With ema_batch_reference, a batch twice the reference trains with m squared (m^kappa)."""
    cfg = {**model_settings("rcmae"), "ema_momentum": 0.9, "ema_batch_reference": 16}
    train_stages.pretrain(cfg, data_file, tmp_path / "pre.pt")
    _, _, _, _, curve = replay(tmp_path, cfg, "pretrain", data_file, tmp_path / "pre.pt")
    kappa = cfg["pretrain"]["batch_size"] / 16
    assert kappa == 2 and np.allclose(curve["momentum"], 0.9 ** 2, rtol=1e-15, atol=0)


def test_rcmae_snapshots_follow_the_weights_its_checkpoint_keeps(tmp_path, data_file):
    for weights in ("teacher", "student"):
        cfg = model_settings("rcmae", downstream_weights=weights)
        ckpt = train_stages.pretrain(cfg, data_file, tmp_path / f"{weights}.pt")
        *_, states, _, _ = replay(tmp_path / weights, cfg, "pretrain", data_file, tmp_path / f"{weights}.pt")
        assert all(torch.equal(states[-1][k], ckpt[weights][k]) for k in ckpt[weights])


@pytest.mark.parametrize("stage", ["probe", "finetune"])
def test_replayed_downstream_training_reproduces_its_checkpoint(tmp_path, data_file, stage):
    cfg = model_settings("mae")
    train_stages.pretrain(cfg, data_file, tmp_path / "pre.pt")
    train_stages.downstream(cfg, stage, data_file, tmp_path / "pre.pt", out=tmp_path / f"{stage}.pt",
                            metrics_out=tmp_path / "m.json")
    meta, steps, states, _, curve = replay(tmp_path, cfg, stage, data_file, tmp_path / f"{stage}.pt",
                                           schedule={"points": 3, "spacing": "linear"}, pretrained=tmp_path / "pre.pt")
    assert meta["replay_difference"] == 0.0 and len(steps) == 3 and steps[-1] == meta["total_steps"] == len(curve)
    moved = [k for k in states[0] if not torch.equal(states[0][k], states[-1][k])]
    assert moved and (stage == "finetune" or all(k.startswith("head.") for k in moved))


def test_a_replay_that_does_not_reproduce_the_checkpoint_is_refused(tmp_path, data_file):
    train_stages.pretrain(model_settings("mae", seed=1), data_file, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"does not reproduce .*other\.pt"):
        replay(tmp_path, model_settings("mae"), "pretrain", data_file, tmp_path / "other.pt")


def test_the_pca_plane_is_centred_on_the_checkpoint_and_follows_the_direction_contract(tmp_path, data_file):
    cfg = model_settings("mae")
    cfg["pretrain"]["epochs"] = 4
    train_stages.pretrain(cfg, data_file, tmp_path / "pre.pt")
    _, steps, states, _, _ = replay(tmp_path, cfg, "pretrain", data_file, tmp_path / "pre.pt", schedule={"every": 2})
    settings = {**cfg, "objective": "pretext",
                "landscape": {"perturb_1d": False, "perturb_frozen": False}, "trajectories": {"normalization": "none"}}
    summary = landscape_stages.trajectory_plane(settings, tmp_path / "pre.pt",
                                                tmp_path / "pretrain/snapshots.safetensors",
                                                tmp_path / "plane.safetensors", tmp_path / "pca.json")
    dirs, meta = directions.load(tmp_path / "plane.safetensors")
    model = build_mae(cfg["arch"], cfg["norm_pix_loss"])
    names = directions.perturbed_names(model, False, False)
    assert sorted(dirs["x"]) == sorted(names) and "pos_embed" not in dirs["x"]
    assert meta["normalization"] == "pca-none"
    assert json.loads((tmp_path / "pca.json").read_text()) == summary
    assert summary["steps"] == steps and summary["coords"][-1] == [0.0, 0.0]
    # independent check in float64: each coordinate is the projection of w_t - w_final on the
    # unit directions, which are orthonormal
    final = states[-1]
    x = torch.cat([dirs["x"][n].double().flatten() for n in names])
    y = torch.cat([dirs["y"][n].double().flatten() for n in names])
    assert abs(float(x @ x) - 1) < 1e-6 and abs(float(y @ y) - 1) < 1e-6 and abs(float(x @ y)) < 1e-6
    for state, (a, b) in zip(states, summary["coords"]):
        d = torch.cat([(state[n].double() - final[n].double()).flatten() for n in names])
        assert abs(float(d @ x) - a) < 1e-5 * max(1.0, abs(a)) and abs(float(d @ y) - b) < 1e-5 * max(1.0, abs(b))
    start = torch.cat([(states[0][n].double() - final[n].double()).flatten() for n in names])
    assert summary["distance_to_final"][0] == pytest.approx(float(start.norm()), rel=1e-9)


def test_snapshots_of_another_checkpoint_are_refused(tmp_path, data_file):
    cfg = model_settings("mae")
    train_stages.pretrain(cfg, data_file, tmp_path / "pre.pt")
    replay(tmp_path, cfg, "pretrain", data_file, tmp_path / "pre.pt")
    train_stages.pretrain(model_settings("mae", seed=3), data_file, tmp_path / "other.pt")
    settings = {**cfg, "objective": "pretext", "landscape": {"perturb_1d": False, "perturb_frozen": False},
                "trajectories": {"normalization": "trajectory"}}
    with pytest.raises(ValueError, match="were recorded for checkpoint"):
        landscape_stages.trajectory_plane(settings, tmp_path / "other.pt", tmp_path / "pretrain/snapshots.safetensors",
                                          tmp_path / "plane.safetensors", tmp_path / "pca.json")


def test_snapshot_probes_match_the_probe_stage_at_both_ends(tmp_path, data_file):
    """The last snapshot is the checkpoint and the first the seeded initialisation: their probes
    are the probe stage's and its random-encoder baseline's."""
    cfg = model_settings("mae")
    train_stages.pretrain(cfg, data_file, tmp_path / "pre.pt")
    metrics = train_stages.downstream(cfg, "probe", data_file, tmp_path / "pre.pt", out=tmp_path / "probe.pt",
                                      metrics_out=tmp_path / "probe.json")
    replay(tmp_path, cfg, "pretrain", data_file, tmp_path / "pre.pt", schedule={"every": 1})
    result = train_stages.snapshot_probes(cfg, data_file, tmp_path / "pretrain/snapshots.safetensors", 3,
                                          tmp_path / "probes.json")
    assert result["steps"] == [0, 2, 4]  # 5 snapshots, 3 evenly spread
    assert json.loads((tmp_path / "probes.json").read_text()) == result
    assert result["test_top1"][-1] == metrics["test_top1"]
    assert result["test_top1"][0] == metrics["random_init_test_top1"]
