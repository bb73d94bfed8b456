"""Measures of a 2-D loss surface that compare losses of different scales.

All work on `loss[i, j]` at `(alpha[i], beta[j])` (a surface dataset's arrays) around the
grid point nearest the origin, the trained weights:
- `basin`: the connected region (4-neighbours) around the centre where the loss stays at
  or below a level, as area and mean radius (the mean, over 360 rays from the centre, of
  the distance at which a ray leaves the region);
- `convex_region`: the connected region around the centre where the surface's
  finite-difference Hessian is positive definite (the paper's "convex region");
- `sharpness`: the mean and largest loss rise on a circle of radius rho.

Non-finite losses (points where the model diverged) are never inside a region, and no
curvature is taken from a finite-difference stencil that touches one; sharpness leaves out
the circle's samples that depend on one and counts them. A region that borders a point whose
value is unknown (a NaN or -inf loss; a curvature left undefined that way, at the centre
too) may extend past it, as one that reaches the grid's edge may: either sets `touches_edge`
(the region is censored), and `touches_nonfinite` says when unknown values are why. A +inf
loss is above every level: it bounds a basin like any high loss. A centre whose own loss is
not finite is an error: nothing can be measured around it.
"""
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

RAYS = 360


def centre_index(alpha: np.ndarray, beta: np.ndarray) -> tuple[int, int]:
    return int(np.abs(alpha).argmin()), int(np.abs(beta).argmin())


def centre_loss(loss: np.ndarray, alpha, beta) -> float:
    """The loss at the centre, which every measure starts from; an error if it is not finite."""
    ci, cj = centre_index(alpha, beta)
    value = float(loss[ci, cj])
    if not math.isfinite(value):
        raise ValueError(f"the loss at the centre (alpha {alpha[ci]:g}, beta {beta[cj]:g}) is {value}: "
                         "the trained weights give no finite loss, so no basin, convex region or sharpness "
                         "can be measured around them")
    return value


def connected(inside: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    """The 4-connected component of `inside` that holds `start` (empty if start is outside)."""
    region = np.zeros_like(inside, dtype=bool)
    if not inside[start]:
        return region
    stack = [start]
    region[start] = True
    while stack:
        i, j = stack.pop()
        for ni, nj in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
            if 0 <= ni < inside.shape[0] and 0 <= nj < inside.shape[1] and inside[ni, nj] and not region[ni, nj]:
                region[ni, nj] = True
                stack.append((ni, nj))
    return region


def borders(region: np.ndarray, points: np.ndarray) -> bool:
    """Whether any of `points` is a 4-neighbour of the region."""
    grown = region.copy()
    grown[1:] |= region[:-1]
    grown[:-1] |= region[1:]
    grown[:, 1:] |= region[:, :-1]
    grown[:, :-1] |= region[:, 1:]
    return bool((grown & points).any())


def _censoring(region: np.ndarray, unknown: np.ndarray, start: tuple[int, int], margin: int = 0) -> dict:
    """`touches_edge` (censored) and `touches_nonfinite` (censored by unknown values, the
    start point's own included) of a region grown from `start`."""
    cut = bool(unknown[start]) or borders(region, unknown)
    return {"touches_edge": touches_edge(region, margin) or cut, "touches_nonfinite": cut}


def touches_edge(region: np.ndarray, margin: int = 0) -> bool:
    """Whether the region reaches the grid's outermost rows/columns (`margin` rows in): its true
    extent may then be larger than measured on this grid."""
    inner = region[margin:region.shape[0] - margin, margin:region.shape[1] - margin]
    return bool(inner[0].any() or inner[-1].any() or inner[:, 0].any() or inner[:, -1].any())


def _cell_area(alpha, beta) -> float:
    return float(np.mean(np.diff(alpha)) * np.mean(np.diff(beta)))


def mean_radius(region: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> float:
    """Mean over rays from the centre of the distance at which each leaves the region
    (or the grid); 0 for an empty region."""
    ci, cj = centre_index(alpha, beta)
    if not region[ci, cj]:
        return 0.0
    step = 0.25 * min(np.mean(np.diff(alpha)), np.mean(np.diff(beta)))
    limit = math.hypot(alpha[-1] - alpha[0], beta[-1] - beta[0])
    radii = []
    for angle in np.linspace(0, 2 * math.pi, RAYS, endpoint=False):
        r = 0.0
        while r < limit:
            a, b = alpha[ci] + (r + step) * math.cos(angle), beta[cj] + (r + step) * math.sin(angle)
            i, j = np.abs(alpha - a).argmin(), np.abs(beta - b).argmin()
            outside_grid = not (alpha[0] <= a <= alpha[-1] and beta[0] <= b <= beta[-1])
            if outside_grid or not region[i, j]:
                break
            r += step
        radii.append(r)
    return float(np.mean(radii))


def basin(loss: np.ndarray, alpha, beta, level: float) -> dict:
    """The region around the centre with loss <= level."""
    centre_loss(loss, alpha, beta)
    start = centre_index(alpha, beta)
    region = connected(np.isfinite(loss) & (loss <= level), start)
    return {"level": float(level), "area": float(region.sum() * _cell_area(alpha, beta)),
            "mean_radius": mean_radius(region, alpha, beta), "points": int(region.sum()),
            **_censoring(region, np.isnan(loss) | np.isneginf(loss), start)}


def relative_basins(loss, alpha, beta, rises) -> list[dict]:
    """Basins at centre * (1 + r): comparable across losses of different scales."""
    centre = centre_loss(loss, alpha, beta)
    return [{"relative_rise": r, **basin(loss, alpha, beta, centre * (1 + r))} for r in rises]


def absolute_basins(loss, alpha, beta, deltas) -> list[dict]:
    centre = centre_loss(loss, alpha, beta)
    return [{"absolute_rise": d, **basin(loss, alpha, beta, centre + d)} for d in deltas]


def convex_region(loss: np.ndarray, alpha, beta) -> dict:
    """Where central differences give f_aa > 0 and f_aa f_bb - f_ab^2 > 0, connected to the
    centre (the grid's edge points have no central difference and are never inside, nor is a
    point whose 3 x 3 stencil holds a non-finite loss)."""
    centre_loss(loss, alpha, beta)
    da, db = np.mean(np.diff(alpha)), np.mean(np.diff(beta))
    f = loss
    with np.errstate(invalid="ignore"):  # inf - inf in a stencil: such points are left out below
        faa = (f[2:, 1:-1] - 2 * f[1:-1, 1:-1] + f[:-2, 1:-1]) / da ** 2
        fbb = (f[1:-1, 2:] - 2 * f[1:-1, 1:-1] + f[1:-1, :-2]) / db ** 2
        fab = (f[2:, 2:] - f[2:, :-2] - f[:-2, 2:] + f[:-2, :-2]) / (4 * da * db)
        convex = (faa > 0) & (faa * fbb - fab ** 2 > 0)
    defined = sliding_window_view(np.isfinite(f), (3, 3)).all(axis=(2, 3))
    inside, undefined = np.zeros_like(f, dtype=bool), np.zeros_like(f, dtype=bool)
    inside[1:-1, 1:-1], undefined[1:-1, 1:-1] = convex & defined, ~defined
    start = centre_index(alpha, beta)
    region = connected(inside, start)
    return {"area": float(region.sum() * _cell_area(alpha, beta)),
            "mean_radius": mean_radius(region, alpha, beta), "points": int(region.sum()),
            **_censoring(region, undefined, start, margin=1)}


def bilinear(loss, alpha, beta, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bilinear interpolation; a corner of weight 0 does not count, so a sample is non-finite
    only when a corner it depends on is."""
    i = np.clip(np.searchsorted(alpha, a) - 1, 0, len(alpha) - 2)
    j = np.clip(np.searchsorted(beta, b) - 1, 0, len(beta) - 2)
    ta = (a - alpha[i]) / (alpha[i + 1] - alpha[i])
    tb = (b - beta[j]) / (beta[j + 1] - beta[j])
    total = np.zeros(np.shape(a))
    for weight, value in (((1 - ta) * (1 - tb), loss[i, j]), (ta * (1 - tb), loss[i + 1, j]),
                          ((1 - ta) * tb, loss[i, j + 1]), (ta * tb, loss[i + 1, j + 1])):
        total += weight * np.where(weight > 0, value, 0.0)  # not 0 * inf = NaN
    return total


def sharpness(loss, alpha, beta, rho: float) -> dict:
    """Loss rise over the centre on the circle of radius rho (bilinear interpolation), over the
    samples that are finite; `nonfinite_samples` counts those left out (of RAYS). With none
    finite the rises are NaN."""
    centre = centre_loss(loss, alpha, beta)
    ci, cj = centre_index(alpha, beta)
    angles = np.linspace(0, 2 * math.pi, RAYS, endpoint=False)
    a, b = alpha[ci] + rho * np.cos(angles), beta[cj] + rho * np.sin(angles)
    if a.min() < alpha[0] or a.max() > alpha[-1] or b.min() < beta[0] or b.max() > beta[-1]:
        raise ValueError(f"a circle of radius {rho} around the centre leaves the grid")
    with np.errstate(invalid="ignore"):  # inf - inf between the corners of one sample
        rise = bilinear(loss, alpha, beta, a, b) - centre
    finite = rise[np.isfinite(rise)]
    return {"rho": rho, "mean_rise": float(finite.mean()) if finite.size else math.nan,
            "max_rise": float(finite.max()) if finite.size else math.nan,
            "nonfinite_samples": int(RAYS - finite.size)}
