"""MoCo v3: its loss against a float64 reference written from the formula, the momentum encoder's
update and schedule, training, the release layout of its checkpoints, and the contrastive
objective (fixed views and keys, a fixed batch partition) against a float64 reference and
independent of tiling."""
import copy
import math

import numpy as np
import pytest
import torch
import xarray as xr

from conftest import model_settings, prepared_noise
from vitlandscape.augment.twoview import two_views
from vitlandscape.data import prepare
from vitlandscape.landscape import directions, grid, objectives, tiles
from vitlandscape.landscape import stages as landscape_stages
from vitlandscape.metrics.hessian import HessianOperator
from vitlandscape.models.mocov3 import MoCoV3, contrastive_terms, symmetric_loss
from vitlandscape.storage import formats
from vitlandscape.train import mocov3 as mocov3_training
from vitlandscape.train import recipes
from vitlandscape.train import stages as train_stages
from vitlandscape.train.rcmae import ema_momentum

ENCODER = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 4}
MOCO = {"dim": 16, "mlp_dim": 32, "temperature": 0.2, "momentum": 0.9, "momentum_schedule": "cosine",
        "freeze_patch_embed": True}


def reference_ctr(q: torch.Tensor, k: torch.Tensor, tau: float) -> float:
    """ctr(q, k) in float64, loop by loop: -log softmax of each query's cosine logits at its own
    key, averaged, times 2 tau."""
    q, k = q.double(), k.double()
    total = 0.0
    for i in range(len(q)):
        qi = q[i] / q[i].norm()
        logits = [float(qi @ (k[j] / k[j].norm())) / tau for j in range(len(k))]
        top = max(logits)
        total += -(logits[i] - top - math.log(sum(math.exp(v - top) for v in logits)))
    return total / len(q) * 2 * tau


def test_the_loss_is_the_symmetrised_infonce_times_two_tau():
    g = torch.Generator().manual_seed(0)
    q1, q2, k1, k2 = (torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(4))
    for tau in (0.2, 1.0):
        expected = reference_ctr(q1, k2, tau) + reference_ctr(q2, k1, tau)
        assert float(symmetric_loss(q1, q2, k1, k2, tau)) == pytest.approx(expected, rel=1e-6)  # float32 logits
    # the terms pair each query with its own key (the diagonal), not with the other view's query
    assert float(contrastive_terms(q1, q1, 0.2).mean()) < float(contrastive_terms(q1, k2, 0.2).mean())


def test_the_momentum_rises_from_m_to_one_by_a_cosine_and_moves_the_momentum_encoder():
    assert ema_momentum(0, 100, 0.99, "cosine") == 0.99
    assert ema_momentum(50, 100, 0.99, "cosine") == pytest.approx(1 - 0.01 / 2, abs=1e-15)
    assert ema_momentum(100, 100, 0.99, "cosine") == 1.0
    # one training step at lr 0: the base encoder stays, the momentum encoder takes its step-0 m
    torch.manual_seed(0)
    model = MoCoV3(ENCODER, **{k: MOCO[k] for k in ("dim", "mlp_dim", "temperature", "freeze_patch_embed")})
    with torch.no_grad():
        for p in model.base_encoder.parameters():
            p.add_(1.0)
    base, before = copy.deepcopy(model.base_encoder.state_dict()), copy.deepcopy(model.momentum_encoder.state_dict())
    cfg = model_settings("mocov3", arch=dict(ENCODER), moco=dict(MOCO))
    cfg["pretrain"].update(epochs=1, batch_size=8, warmup_epochs=0, lr=0.0, recipe={"precision": "fp32"})
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    batches = prepare.TensorBatches((images, torch.zeros(8, dtype=torch.long)), 8, 0)
    mocov3_training.pretrain(model, batches, cfg, recipes.resolve(cfg, "pretrain"))
    for name, p in model.momentum_encoder.named_parameters():
        torch.testing.assert_close(p, 0.9 * before[name] + 0.1 * base[name], rtol=0, atol=1e-6)
    assert all(torch.equal(p, base[n]) for n, p in model.base_encoder.named_parameters())


def test_the_model_has_moco_v3s_layout_and_frozen_tensors():
    model = MoCoV3(ENCODER, **{k: MOCO[k] for k in ("dim", "mlp_dim", "temperature", "freeze_patch_embed")})
    names = set(model.state_dict())
    assert {"base_encoder.head.0.weight", "base_encoder.head.7.running_mean", "momentum_encoder.head.7.running_var",
            "predictor.0.weight", "predictor.3.weight"} <= names
    assert "predictor.4.running_mean" not in names and "base_encoder.head.0.bias" not in names
    assert not model.base_encoder.pos_embed.requires_grad and not model.base_encoder.patch_embed.proj.weight.requires_grad
    assert not any(p.requires_grad for p in model.momentum_encoder.parameters())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, npz_module_data):
    root = tmp_path_factory.mktemp("mocov3")
    cfg = model_settings("mocov3", arch=dict(ENCODER), moco=dict(MOCO))
    cfg["pretrain"].update(epochs=2, batch_size=24, warmup_epochs=0, recipe={"precision": "fp32"})
    ckpt = train_stages.pretrain(cfg, npz_module_data, root / "pretrain.pt")
    return root, cfg, ckpt


@pytest.fixture(scope="module")
def npz_module_data(tmp_path_factory):
    return prepared_noise(tmp_path_factory.mktemp("data"), images=72, size=16, classes=3, eval_samples=20)


def test_training_writes_the_encoder_and_the_whole_model(trained):
    root, cfg, ckpt = trained
    assert ckpt["kind"] == "mocov3" and np.isfinite(ckpt["history"][-1]["loss"])
    read = formats.read(root / "pretrain.pt", prefer=cfg["downstream_weights"])
    assert read.format == "vitlandscape" and formats.serves(read, "contrastive")
    moco = ckpt["moco"]
    # downstream_weights teacher (the default) keeps the momentum encoder, which moved away from the base
    assert all(torch.equal(v, moco[f"momentum_encoder.{k}"]) for k, v in ckpt["model"].items())
    assert not torch.equal(moco["momentum_encoder.blocks.0.attn.qkv.weight"], moco["base_encoder.blocks.0.attn.qkv.weight"])
    # frozen: the patch projection stays as initialised; the EMA of a tensor with itself rounds (m x + (1 - m) x)
    torch.testing.assert_close(moco["momentum_encoder.patch_embed.proj.weight"], moco["base_encoder.patch_embed.proj.weight"],
                               rtol=1e-6, atol=1e-7)
    # saved as MoCo v3's main_moco.py saves it, it is read as that release
    release = {"state_dict": {f"module.{k}": v for k, v in moco.items()}, "epoch": 2}
    torch.save(release, root / "checkpoint_0001.pth.tar")
    found = formats.read(root / "checkpoint_0001.pth.tar", prefer="base")
    assert found.format == "mocov3_pretrain"
    assert all(torch.equal(v, moco[f"base_encoder.{k}"]) for k, v in found.state.items())


def settings(cfg, **landscape):
    ls = {"alpha": [-1.0, 1.0, 5], "beta": [-1.0, 1.0, 4], "tile": [5, 4], "direction_seed": 0, "mask_seed": 0,
          "view_seed": 3, "normalization": "filter", "perturb_1d": False, "perturb_frozen": False,
          "orthogonal": False, "batch_size": 8, "device": "cpu", "precision": "fp32", **landscape}
    return {**cfg, "objective": "contrastive", "landscape": ls}


def reference_loss(model: MoCoV3, images: torch.Tensor, view_seed: int, batch_size: int) -> float:
    """The objective in float64 from its definition: views of the whole subset from the seed, keys
    of the momentum encoder, each batch's symmetrised loss weighted by its size."""
    model = copy.deepcopy(model).double().eval()
    v1, v2 = (v.double() for v in two_views(images, generator=torch.Generator().manual_seed(view_seed)))
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            a, b = v1[i:i + batch_size], v2[i:i + batch_size]
            q1, q2 = model.predictor(model.base_encoder(a)), model.predictor(model.base_encoder(b))
            k1, k2 = model.momentum_encoder(a), model.momentum_encoder(b)
            total += len(a) * (reference_ctr(q1, k2, 0.2) + reference_ctr(q2, k1, 0.2))
    return total / len(images)


def test_the_objective_is_its_definition_and_its_batch_size_is_part_of_it(trained, npz_module_data):
    root, cfg, _ = trained
    images, _ = prepare.eval_set(prepare.load_prepared(npz_module_data), torch.device("cpu"))
    model, _ = objectives.load("contrastive", root / "pretrain.pt", cfg)
    for batch_size in (8, 20):
        objective = objectives.for_stage(settings(cfg, batch_size=batch_size), npz_module_data, root / "pretrain.pt",
                                         landscape_stages.LandscapeSettings.of(settings(cfg, batch_size=batch_size)))
        loss, accuracy = objective.evaluate()
        # float32 forwards against float64: measured 2e-7 relative; 1e-5 sees a wrong key or view
        assert loss == pytest.approx(reference_loss(model, images, 3, batch_size), rel=1e-5) and math.isnan(accuracy)
    eight = objectives.for_stage(settings(cfg), npz_module_data, root / "pretrain.pt",
                                 landscape_stages.LandscapeSettings.of(settings(cfg))).evaluate()[0]
    assert eight != loss  # other negatives, another objective: batch_size enters the config hash
    moved = set(directions.perturbed_names(objective.model, perturb_1d=False, perturb_frozen=False))
    assert "base_encoder.blocks.0.attn.qkv.weight" in moved and "predictor.0.weight" in moved
    assert not any(n.startswith("momentum_encoder") or "patch_embed" in n or n.endswith("pos_embed") for n in moved)
    top = HessianOperator(objective)  # Hessian-vector products run on it
    v = torch.randn(top.size, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(top.matvec(v)).all()


def test_the_surface_does_not_depend_on_its_tiling(trained, npz_module_data):
    root, cfg, _ = trained
    surfaces = []
    for tile in ([5, 4], [2, 3]):
        s = settings(cfg, tile=tile)
        dirs = root / "dirs.safetensors"
        landscape_stages.make_directions(s, root / "pretrain.pt", dirs)
        files = []
        for name in grid.tile_names(s["landscape"]["alpha"], s["landscape"]["beta"], tile):
            files.append(root / f"t{tile[0]}" / f"{name}.nc")
            landscape_stages.surface_tile(s, npz_module_data, root / "pretrain.pt", dirs, name, files[-1])
        tiles.assemble(s, files, root / "pretrain.pt", dirs, root / f"s{tile[0]}.zarr")
        surfaces.append(xr.open_zarr(root / f"s{tile[0]}.zarr"))
    # the same points in one process on fixed views and keys: bits
    np.testing.assert_array_equal(surfaces[0].loss.values, surfaces[1].loss.values)
    assert surfaces[0].attrs["objective"] == "contrastive" and np.isfinite(surfaces[0].loss.values).all()
    assert surfaces[0].loss.values.std() > 0
