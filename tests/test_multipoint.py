"""Several grid points in one vmapped call (workflow/scripts/multipoint_bench.py): each point
is evaluated at its own weights, as the engine does one point at a time and as a float64
reference written from the definitions computes."""
import importlib.util
import json

import numpy as np
import pytest
import torch

import reference
from conftest import ROOT, TINY_ARCH
from vitlandscape.landscape import directions, objectives, surface
from vitlandscape.models.arch import build_mae
from vitlandscape.models.classifier import build_classifier
from vitlandscape.models.masking import eval_noise

_spec = importlib.util.spec_from_file_location("multipoint_bench", ROOT / "workflow/scripts/multipoint_bench.py")
multipoint = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(multipoint)

POINTS = [(0.0, 0.0), (0.6, -0.3), (-0.4, 0.9)]
N, MASK_SEED = 24, 3
ENCODER = {k: TINY_ARCH[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads")}


def reference_point(objective, state, images, labels) -> tuple[float, float]:
    if objective == "pretext":
        return reference.mae_loss(state, TINY_ARCH, images, eval_noise(N, 16, MASK_SEED), 0.75), float("nan")
    logits = reference.classifier_logits(state, ENCODER, images, "supervised")
    # the accuracies are compared exactly: no image may sit near a tie, where float32 rounding
    # (logits ~0.3, errors ~1e-7) could flip its argmax; here the margins are >= 3.8e-3
    top2 = logits.topk(2, dim=-1).values
    assert float((top2[:, 0] - top2[:, 1]).min()) > 1e-4
    return reference.cross_entropy_and_accuracy(logits, labels)


@pytest.mark.parametrize("objective", ["pretext", "supervised"])
def test_batched_points_match_the_engine_and_a_float64_reference(objective):
    torch.manual_seed(0)
    images, labels = torch.randn(N, 3, 16, 16), torch.arange(N) % 3
    model = (build_mae(TINY_ARCH) if objective == "pretext" else build_classifier(ENCODER, 3, "supervised")).eval()
    # batches of 10: the sums run over three batches, the last one short
    built = objectives.from_model(objective, model, images, labels, batch_size=10, mask_seed=MASK_SEED)
    dirs = directions.split(directions.make(model, seed=1))
    state = {k: v.clone() for k, v in model.state_dict().items()}

    losses, accs = multipoint.evaluate_many(built, dirs, POINTS)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # weights untouched
    engine_losses, engine_accs = surface.evaluate_points(built, surface.Perturbation(model, dirs), POINTS)
    expected = np.array([reference_point(objective, reference.moved(state, dirs, a, b), images, labels)
                         for a, b in POINTS])

    # the points are far apart in loss, so one weight set for all of them cannot pass below
    assert np.min(np.abs(np.diff(np.sort(expected[:, 0])))) > 1e-3 * np.max(expected[:, 0])
    np.testing.assert_allclose(losses, engine_losses, rtol=1e-5, atol=0)
    np.testing.assert_allclose(losses, expected[:, 0], rtol=1e-5, atol=0)
    np.testing.assert_array_equal(accs, engine_accs)
    np.testing.assert_array_equal(accs, expected[:, 1])


def test_stacked_weights_hold_each_point():
    model = torch.nn.Linear(2, 2)
    dirs = {"x": {"weight": torch.ones(2, 2)}, "y": {"weight": torch.eye(2)}}
    stacked = multipoint.stacked_weights(model, dirs, [(1.0, 0.0), (0.0, 2.0)])
    assert set(stacked) == {"weight"}  # the bias has no direction: the model's own is used
    torch.testing.assert_close(stacked["weight"][0], model.weight.detach() + 1)
    torch.testing.assert_close(stacked["weight"][1], model.weight.detach() + 2 * torch.eye(2))


def test_bench_checks_agreement_then_times_each_k(tmp_path):
    out = tmp_path / "multipoint.json"
    multipoint.main(["--objective", "supervised", "--images", "16", "--batch-size", "8", "--ks", "1,2",
                     "--rounds", "2", "--points", "2", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["max_rel_diff"] <= 1e-5 and result["vmap_fallbacks"] == []  # the math path batches on the CPU
    assert result["machine"]["threads"] == 1 and result["machine"]["cpu"]
    assert [r["k"] for r in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert all(len(row["seconds_per_round"][m]) == 2 for m in multipoint.METHODS)
        assert row["vmap_speedup"] == pytest.approx(row["vmap_points_per_s"] / row["engine_points_per_s"])
