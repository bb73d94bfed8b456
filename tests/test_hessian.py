"""Curvature by Hessian-vector products against the dense Hessian of a model small enough
to form it (torch.autograd.functional.hessian over the flat parameters, float64)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from vitlandscape.figures import surfaces
from vitlandscape.landscape import objectives
from vitlandscape.metrics import hessian
from vitlandscape.models.arch import build_mae
from vitlandscape.models.classifier import build_classifier
from vitlandscape.models.masking import eval_noise

MICRO = {"img_size": 8, "patch_size": 4, "embed_dim": 8, "depth": 1, "num_heads": 2,
         "decoder_embed_dim": 8, "decoder_depth": 1, "decoder_num_heads": 2}
N = 6


def micro_objective(name: str) -> objectives.Objective:
    torch.manual_seed(0)
    images = torch.randn(N, 3, 8, 8, dtype=torch.float64)
    if name == "pretext":
        model = build_mae(MICRO, norm_pix_loss=True).double().eval()
        noise = eval_noise(N, 4, 0).double()
        batches = [(images[:4], noise[:4], None), (images[4:], noise[4:], None)]
        return objectives.Objective("pretext", model, batches, {"mask_ratio": 0.5, "eval_samples": N})
    model = build_classifier(MICRO, 3, "probe").double().eval()
    labels = torch.arange(N) % 3
    return objectives.Objective("probe", model, [(images[:4], labels[:4]), (images[4:], labels[4:])],
                                {"eval_samples": N})


def dense_hessian(objective) -> np.ndarray:
    """The loss as a function of the flat trainable parameters, written here, differentiated twice."""
    model = objective.model
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for n, p in model.named_parameters() if p.requires_grad]
    flat = torch.cat([p.detach().reshape(-1) for n, p in model.named_parameters() if p.requires_grad])
    images = torch.cat([b[0] for b in objective.batches])

    def loss(vector):
        params, start = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = vector[start:start + shape.numel()].view(shape)
            start += shape.numel()
        if objective.name == "pretext":
            noise = torch.cat([b[1] for b in objective.batches])
            out = functional_call(model, params, (images, 0.5, noise))
            return out[0]  # MAE forward: mean per-patch MSE over masked patches
        labels = torch.cat([b[1] for b in objective.batches])
        return F.cross_entropy(functional_call(model, params, (images,)), labels)

    with sdpa_kernel(SDPBackend.MATH):
        return torch.autograd.functional.hessian(loss, flat).numpy()


@pytest.fixture(scope="module", params=["pretext", "probe"])
def case(request):
    objective = micro_objective(request.param)
    return objective, dense_hessian(objective)


def test_hessian_vector_products_equal_the_dense_hessian(case):
    objective, dense = case
    op = hessian.HessianOperator(objective)
    assert op.size == dense.shape[0] and 1000 < op.size < 5000
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    np.testing.assert_allclose(op.matvec(v).numpy(), dense @ v.numpy(), rtol=1e-9, atol=1e-11)


def test_extreme_eigenvalues_and_residuals(case):
    objective, dense = case
    exact = np.linalg.eigvalsh(dense)
    op = hessian.HessianOperator(objective)
    found = hessian.lanczos(op, k=3, steps=60, seed=0)
    np.testing.assert_allclose(found["top_eigenvalues"], exact[::-1][:3], rtol=1e-3)
    assert found["min_eigenvalue"] == pytest.approx(exact[0], rel=1e-3)
    assert found["ratio_min_max"] == pytest.approx(abs(exact[0] / exact[-1]), rel=2e-3)
    assert max(found["top_residuals"]) < 1e-3 * abs(exact[-1])
    assert found["products"] == found["lanczos_steps"] + 4  # + one residual product per Ritz pair
    assert hessian.lanczos(hessian.HessianOperator(objective), 3, 60, seed=0)["top_eigenvalues"] == \
        found["top_eigenvalues"]


def test_lanczos_stops_at_the_tolerance(case):
    """With a tolerance, Lanczos stops once the Ritz residual estimates fall below it: far fewer
    steps than allowed, residuals (measured by products) near tolerance * lambda_max."""
    objective, dense = case
    exact = np.linalg.eigvalsh(dense)
    found = hessian.lanczos(hessian.HessianOperator(objective), k=3, steps=80, seed=0, tolerance=1e-3)
    assert found["lanczos_steps"] < 30
    residuals = found["top_residuals"] + [found["min_residual"]]
    assert max(residuals) < 2e-3 * exact[-1]
    np.testing.assert_allclose(found["top_eigenvalues"], exact[::-1][:3], rtol=1e-3)
    looser = hessian.lanczos(hessian.HessianOperator(objective), k=3, steps=80, seed=0, tolerance=1e-2)
    assert looser["lanczos_steps"] < found["lanczos_steps"]


def test_trace_and_density(case):
    objective, dense = case
    op = hessian.HessianOperator(objective)
    trace = hessian.hutchinson_trace(op, probes=50, seed=0)
    # the estimator's own spread: |estimate - truth| within 4 standard errors
    assert abs(trace["trace"] - np.trace(dense)) < 4 * trace["trace_stderr"]
    assert trace["products"] == 50
    density = hessian.spectral_density(op, runs=3, steps=30, seed=0)
    weights, nodes = np.array(density["weights"]), np.array(density["nodes"])
    assert weights.sum() == pytest.approx(1.0, abs=1e-9)
    # Gauss quadrature is exact for low powers: per run, sum(w * node^p) = z^T H^p z / n for
    # its Rademacher start z (regenerated here from the seed); the mean over runs follows.
    g = torch.Generator().manual_seed(0)
    starts = [hessian.rademacher(op.size, g).numpy() for _ in range(3)]
    for p in (1, 2, 3):
        power = np.linalg.matrix_power(dense, p)
        expected = np.mean([z @ power @ z for z in starts]) / op.size
        assert (weights * nodes ** p).sum() == pytest.approx(expected, rel=1e-6)
    grid = np.linspace(nodes.min() - 1, nodes.max() + 1, 4001)
    smooth = surfaces.smoothed_density(nodes, weights, grid, width=0.05 * (nodes.max() - nodes.min()))
    assert np.trapezoid(smooth, grid) == pytest.approx(1.0, abs=1e-3)


def test_gaussian_flatness_against_moved_weights_by_hand():
    """Each sample's rise equals the loss at theta + sigma * x-direction of seed + s, computed
    here from the saved weights with functional_call; the weights are restored afterwards."""
    from vitlandscape.landscape import directions
    from vitlandscape.metrics import flatness
    objective = micro_objective("probe")
    model = objective.model
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.cat([b[0] for b in objective.batches])
    labels = torch.cat([b[1] for b in objective.batches])

    def loss(params):
        return F.cross_entropy(functional_call(model, params, (images,)), labels).item()

    sigmas, samples = [0.01, 0.1], 3
    found = flatness.gaussian_flatness(objective, sigmas, samples, seed=7)
    centre = loss(theta)
    rises = np.empty((2, samples))
    for s in range(samples):
        x = directions.split(directions.make(model, 7 + s))["x"]
        for k, sigma in enumerate(sigmas):
            moved = {name: value + sigma * x[name].double() if name in x else value for name, value in theta.items()}
            rises[k, s] = loss(moved) - centre
    np.testing.assert_allclose(found["mean_rise"], rises.mean(axis=1), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(found["stderr"], rises.std(axis=1, ddof=1) / np.sqrt(samples), rtol=1e-9)
    assert found["centre_loss"] == pytest.approx(centre, rel=1e-12)
    assert all(torch.equal(v, theta[k]) for k, v in model.state_dict().items())
    assert flatness.gaussian_flatness(objective, sigmas, samples, seed=7)["mean_rise"] == found["mean_rise"]
