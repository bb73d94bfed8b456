"""The grid and its tiles: every point in exactly one tile, tiles in their slots."""
import numpy as np
import pytest

from vitlandscape.landscape import grid

SPECS = [([-1, 1, 5], [-0.5, 1, 7], [2, 3]), ([-1, 1, 21], [-1, 1, 21], [11, 11]),
         ([0, 1, 4], [0, 1, 1], [4, 1]), ([0, 1, 3], [0, 2, 9], [1, 1]), ([0, 1, 6], [0, 1, 6], [7, 2])]


@pytest.mark.parametrize("alpha,beta,tile", SPECS)
def test_tiles_partition_the_grid(alpha, beta, tile):
    na, nb = alpha[2], beta[2]
    covered = np.zeros((na, nb), dtype=int)
    names = grid.tile_names(alpha, beta, tile)
    assert len(names) == len(set(names)) == -(-na // tile[0]) * -(-nb // tile[1])
    for name in names:
        i, j = (int(part[1:]) for part in name.split("_"))
        sa, sb = grid.tile_slices(name, alpha, beta, tile)
        # tile (i, j) starts at (i * tile_a, j * tile_b) and is full unless it is the last one
        assert (sa.start, sb.start) == (i * tile[0], j * tile[1])
        assert sa.stop - sa.start == min(tile[0], na - i * tile[0])
        assert sb.stop - sb.start == min(tile[1], nb - j * tile[1])
        covered[sa, sb] += 1
    assert (covered == 1).all()


def test_axis_includes_both_ends_in_float64():
    values = grid.axis([-1, 1, 21])
    assert values.dtype == np.float64 and len(values) == 21
    assert values[0] == -1.0 and values[-1] == 1.0 and values[10] == 0.0
    np.testing.assert_array_equal(grid.axis([0.0, 0.0, 1]), [0.0])


@pytest.mark.parametrize("name,problem", [("a2_b0", "outside the 2x3 tiling"), ("a0_b3", "outside the 2x3 tiling"),
                                          ("a-1_b0", "outside"), ("tile3", "not of the form"),
                                          ("ax_b1", "not of the form")])
def test_bad_tile_names_are_refused(name, problem):
    with pytest.raises(ValueError, match=problem):
        grid.tile_slices(name, [-1, 1, 5], [-1, 1, 7], [3, 3])


def test_signature_tells_grids_and_tilings_apart():
    base = grid.signature([-1, 1, 5], [-1, 1, 7], [3, 3])
    assert base == grid.signature([-1, 1, 5], [-1, 1, 7], [3, 3])
    others = {grid.signature([-1, 1, 6], [-1, 1, 7], [3, 3]), grid.signature([-1, 1, 5], [-2, 1, 7], [3, 3]),
              grid.signature([-1, 1, 5], [-1, 1, 7], [3, 4])}
    assert base not in others and len(others) == 3
