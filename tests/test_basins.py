"""Surface measures on analytic surfaces whose basins and convex regions are known."""
import math

import numpy as np
import pytest

from vitlandscape.metrics import basins

AXIS = np.linspace(-1, 1, 201)
A, B = np.meshgrid(AXIS, AXIS, indexing="ij")


def test_bowl_basin_is_the_ellipse_at_the_level():
    """f = 2 a^2 + 0.5 b^2 + 1: {f <= 1 + c} is an ellipse of semi-axes sqrt(c/2), sqrt(c/0.5)."""
    loss = 2 * A ** 2 + 0.5 * B ** 2 + 1
    c = 0.3
    found = basins.basin(loss, AXIS, AXIS, 1 + c)
    semi = (math.sqrt(c / 2), math.sqrt(c / 0.5))
    assert found["area"] == pytest.approx(math.pi * semi[0] * semi[1], rel=0.02)
    # mean over rays of the ellipse's radius r(t) = 1 / sqrt(cos^2 t / s0^2 + sin^2 t / s1^2)
    t = np.linspace(0, 2 * math.pi, 100000, endpoint=False)
    expected = np.mean(1 / np.sqrt(np.cos(t) ** 2 / semi[0] ** 2 + np.sin(t) ** 2 / semi[1] ** 2))
    assert found["mean_radius"] == pytest.approx(expected, rel=0.02)
    # relative and absolute forms of the same level
    assert basins.relative_basins(loss, AXIS, AXIS, [c])[0]["area"] == found["area"]
    assert basins.absolute_basins(loss, AXIS, AXIS, [c])[0]["area"] == found["area"]
    assert not found["touches_edge"]
    # at level 1 + 2.5 the ellipse's long semi-axis (sqrt(5) > 1) leaves the grid: censored
    assert basins.basin(loss, AXIS, AXIS, 3.5)["touches_edge"]
    assert not basins.basin(loss, AXIS, AXIS, 1.45)["touches_edge"]  # semi-axes 0.47, 0.95


def test_basin_is_the_component_around_the_centre():
    """Two wells: the far one, deeper still, is not part of the centre's basin."""
    loss = np.minimum(A ** 2 + B ** 2, (A - 0.8) ** 2 + (B - 0.8) ** 2 - 0.1)
    found = basins.basin(loss, AXIS, AXIS, 0.04)
    assert found["area"] == pytest.approx(math.pi * 0.04, rel=0.03)


def test_bowl_with_a_non_convex_rim():
    """f = r^2/2 - r^4/4: radial curvature 1 - 3 r^2 and tangential 1 - r^2, so the Hessian is
    positive definite exactly for r < 1/sqrt(3)."""
    r2 = A ** 2 + B ** 2
    found = basins.convex_region(r2 / 2 - r2 ** 2 / 4, AXIS, AXIS)
    assert found["area"] == pytest.approx(math.pi / 3, rel=0.02)
    assert found["mean_radius"] == pytest.approx(1 / math.sqrt(3), rel=0.02)
    assert not found["touches_edge"]


def test_a_saddle_has_no_convex_region_and_a_tilted_bowl_is_all_convex():
    assert basins.convex_region(A ** 2 - B ** 2, AXIS, AXIS)["area"] == 0
    assert basins.convex_region(A ** 2 - B ** 2, AXIS, AXIS)["mean_radius"] == 0
    # a correlated bowl (f_ab != 0) stays positive definite everywhere but the grid's edge
    found = basins.convex_region(A ** 2 + A * B + B ** 2, AXIS, AXIS)
    assert found["points"] == 199 * 199
    assert found["touches_edge"]  # convex up to the last points with a central difference
    # ... and a correlated saddle (det < 0 although f_aa, f_bb > 0) has none
    assert basins.convex_region(A ** 2 + 3 * A * B + B ** 2, AXIS, AXIS)["points"] == 0


def test_sharpness_on_a_bowl():
    loss = 3 * (A ** 2 + B ** 2)
    found = basins.sharpness(loss, AXIS, AXIS, 0.5)
    assert found["mean_rise"] == pytest.approx(0.75, rel=1e-3)
    assert found["max_rise"] == pytest.approx(0.75, rel=1e-3)
    elongated = basins.sharpness(A ** 2 + 4 * B ** 2, AXIS, AXIS, 0.5)
    assert elongated["max_rise"] == pytest.approx(1.0, rel=1e-3)
    assert elongated["mean_rise"] == pytest.approx(0.25 * (1 + 4) / 2, rel=1e-3)
    with pytest.raises(ValueError, match="radius 1.5 around the centre leaves the grid"):
        basins.sharpness(loss, AXIS, AXIS, 1.5)
