"""Measures of a 2-D loss surface that compare losses of different scales.

All work on `loss[i, j]` at `(alpha[i], beta[j])` (a surface dataset's arrays) around the
grid point nearest the origin, the trained weights:
- `basin`: the connected region (4-neighbours) around the centre where the loss stays at
  or below a level, as area and mean radius (the mean, over 360 rays from the centre, of
  the distance at which a ray leaves the region);
- `convex_region`: the connected region around the centre where the surface's
  finite-difference Hessian is positive definite (the paper's "convex region");
- `sharpness`: the mean and largest loss rise on a circle of radius rho.
"""
import math

import numpy as np

RAYS = 360


def centre_index(alpha: np.ndarray, beta: np.ndarray) -> tuple[int, int]:
    return int(np.abs(alpha).argmin()), int(np.abs(beta).argmin())


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
    region = connected(np.isfinite(loss) & (loss <= level), centre_index(alpha, beta))
    return {"level": float(level), "area": float(region.sum() * _cell_area(alpha, beta)),
            "mean_radius": mean_radius(region, alpha, beta), "points": int(region.sum()),
            "touches_edge": touches_edge(region)}


def relative_basins(loss, alpha, beta, rises) -> list[dict]:
    """Basins at centre * (1 + r): comparable across losses of different scales."""
    centre = float(loss[centre_index(alpha, beta)])
    return [{"relative_rise": r, **basin(loss, alpha, beta, centre * (1 + r))} for r in rises]


def absolute_basins(loss, alpha, beta, deltas) -> list[dict]:
    centre = float(loss[centre_index(alpha, beta)])
    return [{"absolute_rise": d, **basin(loss, alpha, beta, centre + d)} for d in deltas]


def convex_region(loss: np.ndarray, alpha, beta) -> dict:
    """Where central differences give f_aa > 0 and f_aa f_bb - f_ab^2 > 0, connected to the
    centre (the grid's edge points have no central difference and are never inside)."""
    da, db = np.mean(np.diff(alpha)), np.mean(np.diff(beta))
    f = loss
    inside = np.zeros_like(f, dtype=bool)
    faa = (f[2:, 1:-1] - 2 * f[1:-1, 1:-1] + f[:-2, 1:-1]) / da ** 2
    fbb = (f[1:-1, 2:] - 2 * f[1:-1, 1:-1] + f[1:-1, :-2]) / db ** 2
    fab = (f[2:, 2:] - f[2:, :-2] - f[:-2, 2:] + f[:-2, :-2]) / (4 * da * db)
    inside[1:-1, 1:-1] = (faa > 0) & (faa * fbb - fab ** 2 > 0)
    region = connected(inside, centre_index(alpha, beta))
    return {"area": float(region.sum() * _cell_area(alpha, beta)),
            "mean_radius": mean_radius(region, alpha, beta), "points": int(region.sum()),
            "touches_edge": touches_edge(region, margin=1)}


def bilinear(loss, alpha, beta, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    i = np.clip(np.searchsorted(alpha, a) - 1, 0, len(alpha) - 2)
    j = np.clip(np.searchsorted(beta, b) - 1, 0, len(beta) - 2)
    ta = (a - alpha[i]) / (alpha[i + 1] - alpha[i])
    tb = (b - beta[j]) / (beta[j + 1] - beta[j])
    return ((1 - ta) * (1 - tb) * loss[i, j] + ta * (1 - tb) * loss[i + 1, j]
            + (1 - ta) * tb * loss[i, j + 1] + ta * tb * loss[i + 1, j + 1])


def sharpness(loss, alpha, beta, rho: float) -> dict:
    """Loss rise over the centre on the circle of radius rho (bilinear interpolation)."""
    ci, cj = centre_index(alpha, beta)
    angles = np.linspace(0, 2 * math.pi, RAYS, endpoint=False)
    a, b = alpha[ci] + rho * np.cos(angles), beta[cj] + rho * np.sin(angles)
    if a.min() < alpha[0] or a.max() > alpha[-1] or b.min() < beta[0] or b.max() > beta[-1]:
        raise ValueError(f"a circle of radius {rho} around the centre leaves the grid")
    rise = bilinear(loss, alpha, beta, a, b) - loss[ci, cj]
    return {"rho": rho, "mean_rise": float(rise.mean()), "max_rise": float(rise.max())}
