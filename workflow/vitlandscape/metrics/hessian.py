"""Curvature of an objective's loss at the trained weights, by Hessian-vector products.

The Hessian is taken with respect to every parameter that trains (`requires_grad`; the
fixed sin-cos position embeddings do not), on the objective's own evaluation batches and
fixed masks. One product H v is a double backward pass over every batch; vectors are flat
tensors over those parameters, in float64. Attention runs on the math path: the fused
kernels have no second derivative.

- `lanczos`: the extreme eigenvalues (top-k, and the most negative) with residuals
  ||H v - lambda v|| measured by one more product each;
- `hutchinson_trace`: trace by Rademacher probes, with its standard error;
- `spectral_density`: stochastic Lanczos quadrature (nodes and weights; figures.smoothed_density
  draws them).
"""
import math
import time

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


class HessianOperator:
    """v -> H v for the mean loss of `objective` (a vitlandscape.landscape.objectives.Objective)."""

    def __init__(self, objective):
        self.objective = objective
        self.params = [p for p in objective.model.parameters() if p.requires_grad]
        self.size = sum(p.numel() for p in self.params)
        self.device = self.params[0].device
        self.products = 0
        with torch.inference_mode():  # what the loss is averaged over: fixed masks, fixed set
            self.count = float(sum(objective.batch_sums(b)[1] for b in objective.batches))

    def _split(self, v: torch.Tensor) -> list[torch.Tensor]:
        out, start = [], 0
        for p in self.params:
            out.append(v[start:start + p.numel()].view_as(p).to(p.dtype))
            start += p.numel()
        return out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v, v a flat float64 vector over the parameters."""
        parts = self._split(v)
        total = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        with sdpa_kernel(SDPBackend.MATH), torch.enable_grad():
            for batch in self.objective.batches:
                loss = self.objective.batch_sums(batch)[0] / self.count
                grads = torch.autograd.grad(loss, self.params, create_graph=True)
                dot = sum((g * u).sum() for g, u in zip(grads, parts))
                hv = torch.autograd.grad(dot, self.params)
                total += torch.cat([h.reshape(-1).double() for h in hv])
        self.products += 1
        return total


def _tridiagonal(alphas, betas) -> np.ndarray:
    t = np.diag(alphas)
    for i, b in enumerate(betas):
        t[i, i + 1] = t[i + 1, i] = b
    return t


def _lanczos_basis(op: HessianOperator, start: torch.Tensor, steps: int, converged=None):
    """Lanczos with full re-orthogonalisation from `start`: (alphas, betas, basis).
    `converged(alphas, betas, beta)`, if given, may stop it early after any step."""
    q = start / start.norm()
    basis, alphas, betas = [q], [], []
    for j in range(steps):
        w = op.matvec(basis[j])
        alpha = torch.dot(w, basis[j]).item()
        alphas.append(alpha)
        for b in basis:  # full re-orthogonalisation (twice is enough), for accurate Ritz pairs
            w -= torch.dot(w, b) * b
        for b in basis:
            w -= torch.dot(w, b) * b
        beta = w.norm().item()
        if j == steps - 1 or beta < 1e-10 * max(1.0, abs(alpha)):
            break
        if converged is not None and converged(alphas, betas, beta):
            break
        betas.append(beta)
        basis.append(w / beta)
    return np.array(alphas), np.array(betas[:len(alphas) - 1]), basis


def _extremes(count: int, k: int) -> list[int]:
    """Indices (ascending eigenvalue order) of the k largest Ritz values, then the smallest."""
    return list(range(count - 1, max(-1, count - 1 - k), -1)) + [0]


def ritz_converged(k: int, tolerance: float):
    """Stop test for `_lanczos_basis`: every one of the top-k and the smallest Ritz pairs has
    the residual estimate beta * |last component of its eigenvector| (exact in exact
    arithmetic: ||H v - theta v|| for the Ritz vector v) at most tolerance * |theta_max|."""
    def converged(alphas, betas, beta):
        if len(alphas) <= k:
            return False
        values, vectors = np.linalg.eigh(_tridiagonal(alphas, betas))
        estimates = beta * np.abs(vectors[-1, _extremes(len(values), k)])
        return bool(estimates.max() <= tolerance * np.abs(values).max())
    return converged


def lanczos(op: HessianOperator, k: int, steps: int, seed: int, tolerance: float | None = None) -> dict:
    """The k largest eigenvalues (descending) and the smallest, each with its residual
    ||H v - lambda v|| measured by one more product. At most `steps` Lanczos steps; with a
    `tolerance`, fewer once the estimated residuals are below tolerance * |lambda_max|."""
    start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    v0 = torch.randn(op.size, generator=g, dtype=torch.float64).to(op.device)
    products0 = op.products
    stop = ritz_converged(k, tolerance) if tolerance else None
    alphas, betas, basis = _lanczos_basis(op, v0, min(steps, op.size), stop)
    values, vectors = np.linalg.eigh(_tridiagonal(alphas, betas))
    stacked = torch.stack(basis[:len(alphas)], dim=1)

    def ritz(i):
        v = stacked @ torch.from_numpy(vectors[:, i]).to(stacked)
        v = v / v.norm()
        return values[i], (op.matvec(v) - values[i] * v).norm().item()

    *top, low = [ritz(i) for i in _extremes(len(values), k)]
    return {"top_eigenvalues": [float(x) for x, _ in top], "top_residuals": [r for _, r in top],
            "min_eigenvalue": float(low[0]), "min_residual": low[1],
            "ratio_min_max": abs(low[0] / top[0][0]) if top[0][0] else float("nan"),
            "lanczos_steps": len(alphas), "products": op.products - products0,
            "seconds": time.perf_counter() - start}


def rademacher(size: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (size,), generator=generator).double() * 2 - 1


def hutchinson_trace(op: HessianOperator, probes: int, seed: int) -> dict:
    """tr H ~ mean of z^T H z over Rademacher z, with the standard error of that mean."""
    start, products0 = time.perf_counter(), op.products
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(probes):
        z = rademacher(op.size, g).to(op.device)
        samples.append(torch.dot(z, op.matvec(z)).item())
    samples = np.array(samples)
    stderr = samples.std(ddof=1) / math.sqrt(probes) if probes > 1 else float("nan")
    return {"trace": float(samples.mean()), "trace_stderr": float(stderr), "probes": probes,
            "products": op.products - products0, "seconds": time.perf_counter() - start}


def spectral_density(op: HessianOperator, runs: int, steps: int, seed: int) -> dict:
    """Stochastic Lanczos quadrature: per run, the Ritz values of a Lanczos run from a
    Rademacher start are nodes, the squared first components of their vectors weights.
    Averaged over runs the weights sum to 1 and sum(w * node^p) estimates tr(H^p) / n."""
    start, products0 = time.perf_counter(), op.products
    g = torch.Generator().manual_seed(seed)
    nodes, weights = [], []
    for _ in range(runs):
        alphas, betas, _ = _lanczos_basis(op, rademacher(op.size, g).to(op.device), min(steps, op.size))
        values, vectors = np.linalg.eigh(_tridiagonal(alphas, betas))
        nodes.append(values)
        weights.append(vectors[0] ** 2 / runs)
    return {"nodes": np.concatenate(nodes).tolist(), "weights": np.concatenate(weights).tolist(),
            "runs": runs, "products": op.products - products0, "seconds": time.perf_counter() - start}
