"""Loss surfaces: evaluate grid points by moving a model's weights in place (no copy).

The files they go into, and the surface contract, are in landscape/tiles.py.
"""
import numpy as np
import torch

from vitlandscape import progress


class Perturbation:
    """Sets a model's weights to theta + a * dx + b * dy in place (no copy of the model).

    `directions` is {'x': {name: dx}, 'y': {name: dy}}; an empty 'y' perturbs along x only.
    """

    def __init__(self, model: torch.nn.Module, directions: dict):
        params = dict(model.named_parameters())
        unknown = sorted(set(directions["x"]) - set(params))
        if unknown:
            raise ValueError(f"directions name parameters the model does not have: {', '.join(unknown)}")
        self.entries = []
        for name, dx in directions["x"].items():
            p = params[name]
            if dx.shape != p.shape:
                raise ValueError(f"direction for {name} has shape {tuple(dx.shape)}, parameter {tuple(p.shape)}")
            dy = directions["y"].get(name)
            self.entries.append((p, p.detach().clone(), dx.to(p.device, p.dtype),
                                 None if dy is None else dy.to(p.device, p.dtype)))

    @torch.no_grad()
    def set(self, a: float, b: float = 0.0) -> None:
        for p, theta, dx, dy in self.entries:
            torch.add(theta, dx, alpha=a, out=p)
            if dy is not None:
                p.add_(dy, alpha=b)

    @torch.no_grad()
    def restore(self) -> None:
        for p, theta, _, _ in self.entries:
            p.copy_(theta)


def evaluate_points(objective, perturbation: Perturbation, points, desc: str = "points"):
    """Loss and accuracy at each (a, b) in `points`; NaN/inf are kept as they come."""
    losses, accs = np.empty(len(points)), np.empty(len(points))
    try:
        for k, (a, b) in enumerate(progress.bar(points, desc, unit="pt")):
            perturbation.set(a, b)
            losses[k], accs[k] = objective.evaluate()
    finally:
        perturbation.restore()
    return losses, accs


def evaluate_tile(objective, perturbation: Perturbation, alphas, betas):
    """-> (loss, accuracy), each [len(alphas), len(betas)]."""
    points = [(float(a), float(b)) for a in alphas for b in betas]
    losses, accs = evaluate_points(objective, perturbation, points, desc="tile")
    shape = (len(alphas), len(betas))
    return losses.reshape(shape), accs.reshape(shape)


