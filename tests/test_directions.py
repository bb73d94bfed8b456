"""Directions: filter normalisation, what is perturbed, orthogonality, the file contract."""
import math

import pytest
import torch

from conftest import TINY_ARCH
from vitlandscape.landscape import directions
from vitlandscape.models.arch import build_mae
from vitlandscape.models.classifier import build_classifier


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_mae(TINY_ARCH)


def _slice_norms(t):
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1)


def test_filter_normalisation_matches_weight_slices(model):
    dirs = directions.make(model, seed=0)
    params = dict(model.named_parameters())
    assert dirs, "no directions made"
    for key, d in dirs.items():
        w = params[key.split(".", 1)[1]].detach()
        assert d.ndim >= 2
        torch.testing.assert_close(_slice_norms(d), _slice_norms(w), rtol=1e-5, atol=1e-6)


def test_default_skips_1d_and_frozen_parameters(model):
    names = {k.split(".", 1)[1] for k in directions.make(model, seed=0)}
    params = dict(model.named_parameters())
    assert names == {n for n, p in params.items() if p.ndim >= 2 and p.requires_grad}
    assert "blocks.0.attn.qkv.weight" in names and "cls_token" in names and "mask_token" in names
    assert "pos_embed" not in names and "decoder_pos_embed" not in names
    assert "norm.weight" not in names and "blocks.0.attn.qkv.bias" not in names


def test_1d_and_frozen_parameters_on_request(model):
    names = {k.split(".", 1)[1] for k in directions.make(model, seed=0, perturb_1d=True, perturb_frozen=True)}
    assert {"pos_embed", "decoder_pos_embed", "norm.weight", "blocks.0.attn.qkv.bias"} <= names
    assert names == {n for n, _ in model.named_parameters()}
    dirs = directions.make(model, seed=0, perturb_1d=True)
    bias = dirs["x.blocks.0.attn.qkv.bias"]
    torch.testing.assert_close(bias.norm(), model.blocks[0].attn.qkv.bias.detach().norm())


def test_probe_classifier_keeps_sincos_fixed():
    model = build_classifier(TINY_ARCH, 10, "probe")
    names = {k.split(".", 1)[1] for k in directions.make(model, seed=0)}
    assert "pos_embed" not in names and "head.1.weight" in names and "blocks.1.mlp.fc1.weight" in names


def test_layer_and_no_normalisation(model):
    params = dict(model.named_parameters())
    layer = directions.make(model, seed=0, normalization="layer")
    for key, d in layer.items():
        torch.testing.assert_close(d.norm(), params[key.split(".", 1)[1]].detach().norm(), rtol=1e-5, atol=1e-6)
    raw = directions.make(model, seed=0, normalization="none")
    filt = directions.make(model, seed=0)
    key = "x.blocks.0.mlp.fc1.weight"
    # same Gaussian draw, different scaling: parallel slices
    cos = torch.nn.functional.cosine_similarity(raw[key], filt[key], dim=1)
    torch.testing.assert_close(cos, torch.ones_like(cos))
    with pytest.raises(ValueError, match="unknown normalization"):
        directions.make(model, seed=0, normalization="batch")


def test_seed_and_orthogonality(model):
    a, b = directions.make(model, seed=1), directions.make(model, seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = directions.make(model, seed=2)
    assert not torch.equal(a["x.cls_token"], c["x.cls_token"])

    def flat(dirs, axis):
        return torch.cat([v.flatten() for k, v in sorted(dirs.items()) if k.startswith(axis)]).double()

    orth = directions.make(model, seed=1, orthogonal=True)
    x, y = flat(orth, "x."), flat(orth, "y.")
    assert abs(float(x @ y)) < 1e-6 * float(x.norm() * y.norm())
    assert abs(float(flat(a, "x.") @ flat(a, "y."))) > abs(float(x @ y))


def test_file_round_trip_and_contract(tmp_path, model):
    dirs = directions.make(model, seed=0)
    path = tmp_path / "d.safetensors"
    directions.save(dirs, path, {"checkpoint_sha256": "abc", "normalization": "filter"})
    split, meta = directions.load(path)
    assert meta == {"checkpoint_sha256": "abc", "normalization": "filter"}
    assert set(split["x"]) == set(split["y"]) == {k[2:] for k in dirs if k.startswith("x.")}
    assert set(split["x"]) <= set(model.state_dict())
    torch.testing.assert_close(split["y"]["cls_token"], dirs["y.cls_token"])


def test_orthogonal_y_is_y_minus_its_projection_on_x(model):
    """Unnormalised directions have different norms, so the projection coefficient matters."""
    raw = directions.make(model, seed=3, normalization="none")
    orth = directions.make(model, seed=3, normalization="none", orthogonal=True)
    names = [k[2:] for k in raw if k.startswith("x.")]
    x = torch.cat([raw[f"x.{n}"].flatten() for n in names]).double()
    y = torch.cat([raw[f"y.{n}"].flatten() for n in names]).double()
    assert not math.isclose(float(x.norm()), float(y.norm()), rel_tol=1e-3)
    expected = y - (x @ y) / (x @ x) * x
    got = torch.cat([orth[f"y.{n}"].flatten() for n in names]).double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(orth[f"x.{n}"], raw[f"x.{n}"]) for n in names)


def test_filter_normalisation_by_hand():
    """d[k] * ||w[k]|| / (||d[k]|| + 1e-10) for every slice k along dim 0, written out."""
    torch.manual_seed(0)
    w, d = torch.randn(3, 2, 4).double(), torch.randn(3, 2, 4).double()
    w[1] = 0.0  # a dead filter gets a zero direction
    got = directions.normalize(d, w, "filter")
    for k in range(3):
        torch.testing.assert_close(got[k], d[k] * w[k].norm() / (d[k].norm() + 1e-10))
    assert torch.equal(directions.normalize(d, w, "none"), d)
    torch.testing.assert_close(directions.normalize(d, w, "layer"), d * w.norm() / (d.norm() + 1e-10))
    bias_w, bias_d = torch.tensor([3.0, 4.0]), torch.tensor([1.0, 0.0])
    torch.testing.assert_close(directions.normalize(bias_d, bias_w, "filter"), torch.tensor([5.0, 0.0]))


def test_no_perturbed_parameter_is_an_error():
    frozen = torch.nn.Linear(3, 2)
    frozen.requires_grad_(False)
    with pytest.raises(ValueError, match="^no parameter is perturbed: check perturb_1d / perturb_frozen$"):
        directions.make(frozen, seed=0)


@pytest.mark.parametrize("bad,problem", [({"z.w": torch.zeros(1)}, "'z.w' is not named x.<param>"),
                                         ({"x": torch.zeros(1)}, "'x' is not named"),
                                         ({"x.a": torch.zeros(1), "y.b": torch.zeros(1)}, "different parameters")])
def test_malformed_direction_files_are_named(tmp_path, bad, problem):
    path = tmp_path / "bad.safetensors"
    directions.save(bad, path, {})
    with pytest.raises(ValueError, match=f"direction file .*bad.safetensors: .*{problem}"):
        directions.load(path)


def test_directions_are_float32_whatever_the_default_dtype(model):
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        dirs = directions.make(model, seed=0)
    finally:
        torch.set_default_dtype(default)
    assert {d.dtype for d in dirs.values()} == {torch.float32}
    assert all(torch.equal(dirs[k], v) for k, v in directions.make(model, seed=0).items())
