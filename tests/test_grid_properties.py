"""Grid arithmetic, property-tested: for any grid and tile shape the tiles tile the grid,
and evaluating every tile computes every grid point exactly once, at its own coordinates."""
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitlandscape.landscape import grid, surface

SETTINGS = settings(max_examples=150, deadline=None, database=None)


@st.composite
def grids(draw):
    """(alpha spec, beta spec, tile): axes of 1-40 points with min < max (min == max with 1 point)."""
    def axis():
        num = draw(st.integers(1, 40))
        low = draw(st.floats(-10, 10, allow_nan=False))
        span = 0.0 if num == 1 else draw(st.floats(1e-3, 10))
        return [low, low + span, num]
    return axis(), axis(), [draw(st.integers(1, 45)), draw(st.integers(1, 45))]


@SETTINGS
@given(grids())
def test_tiles_tile_the_grid(spec):
    alpha, beta, tile = spec
    names = grid.tile_names(alpha, beta, tile)
    na, nb = grid.tile_counts(alpha, beta, tile)
    assert len(set(names)) == len(names) == na * nb
    covered = np.zeros((alpha[2], beta[2]), dtype=int)
    for name in names:
        i, j = (int(part[1:]) for part in name.split("_"))
        sa, sb = grid.tile_slices(name, alpha, beta, tile)
        # a tile sits in its slot of the tile lattice and is full, unless it is the last of its row or column
        assert (sa.start, sb.start) == (i * tile[0], j * tile[1])
        assert sa.stop - sa.start == (tile[0] if i < na - 1 else alpha[2] - (na - 1) * tile[0]) > 0
        assert sb.stop - sb.start == (tile[1] if j < nb - 1 else beta[2] - (nb - 1) * tile[1]) > 0
        covered[sa, sb] += 1
    assert (covered == 1).all()
    for outside in (f"a{na}_b0", f"a0_b{nb}"):
        with pytest.raises(ValueError, match="outside"):
            grid.tile_slices(outside, alpha, beta, tile)


class Recorder:
    """Stands for the model and its loss: records every point the tile loop moves the weights to."""

    def __init__(self):
        self.points, self.here = Counter(), None

    def set(self, a, b=0.0):
        self.here = (a, b)

    def restore(self):
        self.here = None

    def evaluate(self):
        self.points[self.here] += 1
        a, b = self.here
        return a + 10 * b, a * b


@SETTINGS
@given(grids())
def test_every_point_is_computed_exactly_once_at_its_coordinates(spec):
    alpha, beta, tile = spec
    alphas, betas = grid.axis(alpha), grid.axis(beta)
    assert len(alphas) == alpha[2] and (alphas[0], alphas[-1]) == (alpha[0], alpha[1])
    assert np.all(np.diff(alphas) > 0) and np.all(np.diff(betas) > 0)
    recorder, loss = Recorder(), np.full((alpha[2], beta[2]), np.nan)
    for name in grid.tile_names(alpha, beta, tile):
        sa, sb = grid.tile_slices(name, alpha, beta, tile)
        loss[sa, sb], _ = surface.evaluate_tile(recorder, recorder, alphas[sa], betas[sb])
    assert recorder.points == Counter({(a, b): 1 for a in alphas.tolist() for b in betas.tolist()})
    np.testing.assert_array_equal(loss, alphas[:, None] + 10 * betas[None, :])  # loss[i, j] at (alpha[i], beta[j])
