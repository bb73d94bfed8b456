"""The landscape grid and its tiles (one Snakemake job per tile)."""
import math

import numpy as np


def axis(spec) -> np.ndarray:
    """[min, max, num] -> num evenly spaced float64 points (both ends included)."""
    start, stop, num = spec
    return np.linspace(float(start), float(stop), int(num))


def tile_counts(alpha_spec, beta_spec, tile) -> tuple[int, int]:
    return math.ceil(int(alpha_spec[2]) / tile[0]), math.ceil(int(beta_spec[2]) / tile[1])


def tile_names(alpha_spec, beta_spec, tile) -> list[str]:
    na, nb = tile_counts(alpha_spec, beta_spec, tile)
    return [f"a{i}_b{j}" for i in range(na) for j in range(nb)]


def tile_slices(name: str, alpha_spec, beta_spec, tile) -> tuple[slice, slice]:
    """Index ranges of tile `a{i}_b{j}`; the last tile of a row or column may be partial."""
    try:
        i, j = (int(part[1:]) for part in name.split("_"))
    except ValueError as err:
        raise ValueError(f"tile name {name!r} is not of the form a<i>_b<j>") from err
    na, nb = tile_counts(alpha_spec, beta_spec, tile)
    if not (0 <= i < na and 0 <= j < nb):
        raise ValueError(f"tile {name} is outside the {na}x{nb} tiling of the grid")
    num_a, num_b = int(alpha_spec[2]), int(beta_spec[2])
    return (slice(i * tile[0], min((i + 1) * tile[0], num_a)),
            slice(j * tile[1], min((j + 1) * tile[1], num_b)))


def signature(alpha_spec, beta_spec, tile) -> str:
    """A string that identifies the grid and its tiling (stored with every tile)."""
    return f"alpha={list(alpha_spec)} beta={list(beta_spec)} tile={list(tile)}"
