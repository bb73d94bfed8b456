"""The PCA plane of a training path (Li et al. 2018, section 7), from its snapshots (storage/snapshots.py).

The plane follows the direction-file contract (`x.<param>`, `y.<param>`), centred on the final
weights: a surface drawn around them carries the path. PCA works on the n x n Gram matrix of
the snapshots, summed block by block in float64, so the parameters (100M+) are never held as
one n x P matrix.
"""
import math

import numpy as np
import torch

from vitlandscape.landscape.directions import normalize

NORMALIZATIONS = ("none", "trajectory", "filter")
_BLOCK = 1 << 24  # float64 elements of w_t - w_final held at once, all snapshots together
_FLAT = 1e-12     # second eigenvalue / first below which the path is a straight line
_TINY = 1e-8      # extent of the path along an axis, relative to the first axis', that counts as none


# ---------------------------------------------------------------- the PCA plane

def _check(states: list, final: dict, names: list, least: int) -> None:
    if len(states) < least:
        raise ValueError(f"need at least {least} snapshots, got {len(states)}")
    if not names:
        raise ValueError("no parameters named")
    if len(set(names)) != len(names):
        raise ValueError("parameter names repeat")
    for name in names:
        if name not in final:
            raise ValueError(f"parameter {name!r} is missing from the final weights")
        for i, state in enumerate(states):
            if name not in state:
                raise ValueError(f"parameter {name!r} is missing from snapshot {i}")
            if state[name].shape != final[name].shape:
                raise ValueError(f"parameter {name!r}: snapshot {i} has shape {tuple(state[name].shape)}, "
                                 f"the final weights {tuple(final[name].shape)}")


def _blocks(final: dict, names: list, n: int):
    """(name, rows) pieces of the parameters: whole slices along dim 0 (filter normalisation
    works slice by slice), n snapshots of a piece about _BLOCK elements; rows None = all of a
    parameter with ndim < 2."""
    for name in names:
        shape = final[name].shape
        if len(shape) < 2:
            yield name, None
            continue
        per = max(1, _BLOCK // max(1, n * math.prod(shape[1:])))
        for start in range(0, shape[0], per):
            yield name, slice(start, start + per)


def _piece(t: torch.Tensor, rows) -> torch.Tensor:
    t = t.detach()
    return (t if rows is None else t[rows]).to("cpu", torch.float64)


def _diffs(states: list, final: dict, name: str, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """(n x m rows w_t - w_final of one piece, flattened, float64; the final piece, float64)."""
    w = _piece(final[name], rows)
    return torch.stack([_piece(s[name], rows).reshape(-1) for s in states]) - w.reshape(-1), w


def _sign(coords: np.ndarray) -> float:
    """-1 if the path's first clearly non-zero coordinate is positive, else 1 (the first
    snapshot, unless it lies on the other axis)."""
    extent = np.abs(coords).max()
    first = next((c for c in coords if abs(c) > _TINY * extent), 0.0)
    return -1.0 if first > 0 else 1.0


def pca_plane(states: list, final: dict, names: list, normalization: str = "trajectory",
              fill: float = 0.8, dtype: torch.dtype = torch.float32) -> dict:
    """The plane of the first two principal components of the path w_t - w_final.

    Rows are centred (PCA as Li et al. do it); coordinates project the uncentred w_t - w_final,
    so the final weights sit at (0, 0); each axis points so that the first snapshot is at a
    coordinate <= 0. A straight path (second eigenvalue <= 1e-12 of the first) has no second
    component: its second axis is the final weights without their part along the first.
    normalization: none (unit components); trajectory (component k times
    s_k = max_t |c_k(t)| / fill: the path fills [-fill, fill], a [-1, 1] grid holds it with a
    margin; an axis the path does not extend along takes the first axis' scale); filter (unit
    components rescaled filter-wise to the final weights as `directions.normalize` does, the
    coordinates the least-squares fit of w_t - w_final on the two directions).

    -> {'directions': {'x.<name>', 'y.<name>': tensor of `dtype`}, 'coords': float64 (n, 2),
    'explained_variance_ratio': [r1, r2] (eigenvalue / sum of all), 'scale': [s1, s2] (1.0
    unless trajectory), 'normalization', 'in_plane': per snapshot the fraction of
    ||w_t - w_final||^2 the plane captures (1.0 for the final weights)}.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; use {', '.join(NORMALIZATIONS)}")
    if not 0 < fill <= 1:
        raise ValueError(f"fill must be in (0, 1], got {fill!r}")
    _check(states, final, names, least=3)
    n = len(states)
    f64 = torch.float64
    gram, cross = torch.zeros(n, n, dtype=f64), torch.zeros(n, n, dtype=f64)  # C C^T, D C^T
    sq, cw, dw, ww = torch.zeros(n, dtype=f64), torch.zeros(n, dtype=f64), torch.zeros(n, dtype=f64), 0.0
    for name, rows in _blocks(final, names, n):
        d, w = _diffs(states, final, name, rows)
        c, w = d - d.mean(0), w.reshape(-1)
        gram += c @ c.T
        cross += d @ c.T
        sq += (d * d).sum(1)
        cw, dw, ww = cw + c @ w, dw + d @ w, ww + float(w @ w)

    lam, vec = np.linalg.eigh(gram.numpy())
    order = np.argsort(lam)[::-1]
    lam, vec = np.clip(lam[order], 0.0, None), vec[:, order]
    if lam.sum() <= 0:
        raise ValueError("the snapshots are all equal: the path spans no plane")
    ratio = [float(r) for r in lam[:2] / lam.sum()]
    # each axis as u = C^T alpha + beta * w_final; its coordinates D u = cross alpha + beta * (D w_final)
    cross, cw, dw = cross.numpy(), cw.numpy(), dw.numpy()
    alpha, beta = [vec[:, 0] / math.sqrt(lam[0])], [0.0]
    if lam[1] > _FLAT * lam[0]:
        alpha.append(vec[:, 1] / math.sqrt(lam[1]))
        beta.append(0.0)
    else:
        along = float(cw @ alpha[0])  # w_final . u1
        rest = ww - along ** 2
        if rest <= _FLAT * ww:
            raise ValueError("the path is a straight line along the final weights: no second direction")
        alpha.append(-along / math.sqrt(rest) * alpha[0])
        beta.append(1.0 / math.sqrt(rest))
    coords = np.stack([cross @ a + b * dw for a, b in zip(alpha, beta)], axis=1)
    for k in range(2):
        sign = _sign(coords[:, k])
        alpha[k], beta[k], coords[:, k] = sign * alpha[k], sign * beta[k], sign * coords[:, k]

    scale = [1.0, 1.0]
    if normalization == "trajectory":
        extent = np.abs(coords).max(0)
        scale = [float(extent[0] / fill)] * 2
        if extent[1] > _TINY * extent[0]:
            scale[1] = float(extent[1] / fill)
    moved = sq.numpy() > 0
    in_plane = np.ones(n)
    in_plane[moved] = (coords[moved] ** 2).sum(1) / sq.numpy()[moved]
    coords = coords / np.array(scale)

    out = {f"{axis}.{name}": torch.empty(final[name].shape, dtype=dtype) for axis in "xy" for name in names}
    fit_a, fit_b = torch.zeros(2, 2, dtype=f64), torch.zeros(n, 2, dtype=f64)  # X X^T, D X^T
    for name, rows in _blocks(final, names, n):
        d, w = _diffs(states, final, name, rows)
        c = d - d.mean(0)
        pieces = []
        for axis, a, b, s in zip("xy", alpha, beta, scale):
            u = (c.T @ torch.from_numpy(a * s) + (b * s) * w.reshape(-1)).reshape(w.shape)
            if normalization == "filter":
                u = normalize(u, w, "filter")
            piece = u.to(dtype)
            out[f"{axis}.{name}"][... if rows is None else rows] = piece
            pieces.append(piece.to(f64).reshape(-1))
        if normalization == "filter":
            x = torch.stack(pieces)
            fit_a += x @ x.T
            fit_b += d @ x.T

    if normalization == "filter":  # least squares on the directions as stored
        fit_b = fit_b.numpy()
        coords = np.linalg.solve(fit_a.numpy(), fit_b.T).T
        in_plane[moved] = (fit_b[moved] * coords[moved]).sum(1) / sq.numpy()[moved]
        for k, axis in enumerate("xy"):
            if _sign(coords[:, k]) < 0:
                coords[:, k] = -coords[:, k]
                for name in names:
                    out[f"{axis}.{name}"].neg_()
    return {"directions": out, "coords": coords, "explained_variance_ratio": ratio, "scale": scale,
            "normalization": normalization, "in_plane": [float(v) for v in np.clip(in_plane, 0.0, 1.0)]}


# ---------------------------------------------------------------- distances and the summary

def path_distances(states: list, final: dict, names: list) -> dict:
    """Distances over `names`, float64: 'distance_to_final' ||w_t - w_final|| per snapshot;
    'distance_travelled' the cumulative sum of ||w_{t+1} - w_t|| from 0 at the first snapshot,
    a lower bound of the path length (the path sampled at the snapshots only, straight lines
    between them); 'final_norm' ||w_final||."""
    _check(states, final, names, least=1)
    n = len(states)
    to_final, hops, final_sq = torch.zeros(n, dtype=torch.float64), torch.zeros(n - 1, dtype=torch.float64), 0.0
    for name, rows in _blocks(final, names, n):
        d, w = _diffs(states, final, name, rows)
        to_final += (d * d).sum(1)
        hops += ((d[1:] - d[:-1]) ** 2).sum(1)
        final_sq += float((w * w).sum())
    travelled = np.concatenate([[0.0], np.cumsum(np.sqrt(hops.numpy()))])
    return {"distance_to_final": [float(v) for v in np.sqrt(to_final.numpy())],
            "distance_travelled": [float(v) for v in travelled], "final_norm": math.sqrt(final_sq)}


def summary(steps: list, plane: dict, distances: dict) -> dict:
    """The JSON-ready record of a trajectory (pca.json) that figures and tables read."""
    steps = [int(s) for s in steps]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"steps must increase, got {steps}")
    coords = np.asarray(plane["coords"], dtype=np.float64)
    per_step = {"coords": len(coords), "in_plane": len(plane["in_plane"]),
                "distance_to_final": len(distances["distance_to_final"]),
                "distance_travelled": len(distances["distance_travelled"])}
    if coords.ndim != 2 or coords.shape[1] != 2 or any(v != len(steps) for v in per_step.values()):
        raise ValueError(f"{len(steps)} steps but {per_step} entries")
    return {"steps": steps,
            "coords": [[float(a), float(b)] for a, b in coords],
            "explained_variance_ratio": [float(r) for r in plane["explained_variance_ratio"]],
            "scale": [float(s) for s in plane["scale"]],
            "normalization": str(plane["normalization"]),
            "in_plane": [float(v) for v in plane["in_plane"]],
            "distance_to_final": [float(v) for v in distances["distance_to_final"]],
            "distance_travelled": [float(v) for v in distances["distance_travelled"]],
            "final_norm": float(distances["final_norm"])}
