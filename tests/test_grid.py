"""The common grid: pixel areas and point -> pixel edge cases (DESIGN 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geoens.core.grid import Grid


@pytest.mark.parametrize("h", [2, 3, 18, 180, 1000, 5400])
def test_areas_sum_to_sphere(h: int) -> None:
    g = Grid(h, 2 * h)
    total = g.row_areas().sum() * g.width
    assert total == pytest.approx(4 * math.pi * g.earth_radius_km**2, rel=1e-12)
    assert g.total_area() == pytest.approx(4 * math.pi * 6371.0088**2, rel=1e-15)
    areas = g.row_areas()
    assert (areas > 0).all()
    np.testing.assert_allclose(areas, areas[::-1], rtol=1e-9)  # symmetric about the equator
    assert areas.argmax() in (h // 2 - 1, h // 2)


def test_pixel_areas_full_and_radius() -> None:
    g = Grid(10, 20, earth_radius_km=1.0)
    a = g.pixel_areas()
    assert a.shape == (10, 20)
    assert a.sum() == pytest.approx(4 * math.pi, rel=1e-12)
    # one row's area is the zone area / W: 2 pi R^2 (sin top - sin bottom) / W
    assert a[0, 0] == pytest.approx(2 * math.pi * (1 - math.sin(math.radians(72))) / 20, rel=1e-12)


def test_point_to_pixel_edge_cases() -> None:
    g = Grid(180, 360)
    lat = np.array([90.0, -90.0, 89.5, 0.0, -0.0, 1e-12, -1e-12, 89.0, -89.0, 45.0])
    lon = np.array([180.0, -180.0, 179.999999, 0.0, -0.0, 359.5, -359.5, 180.0 - 1e-9, -540.0, 540.0])
    r, c = g.pixel_of(lat, lon)
    # lat = 90 -> row 0; lat = -90 -> last row; an edge belongs to the row south of it.
    assert r.tolist() == [0, 179, 0, 90, 90, 89, 90, 1, 179, 45]
    # lon = 180 wraps to column 0 (same as -180); 359.5 is -0.5 -> column 179; -359.5 is 0.5 -> 180.
    assert c.tolist() == [0, 0, 359, 180, 180, 179, 180, 359, 0, 0]
    assert g.flat_index(90.0, -180.0).item() == 0
    assert g.flat_index(-90.0, 179.9999).item() == 180 * 360 - 1


def test_pixel_center_roundtrip() -> None:
    g = Grid(7, 14)
    rr, cc = np.meshgrid(np.arange(7), np.arange(14), indexing="ij")
    la, lo = g.pixel_center(rr, cc)
    r2, c2 = g.pixel_of(la, lo)
    np.testing.assert_array_equal(r2, rr)
    np.testing.assert_array_equal(c2, cc)
    np.testing.assert_allclose(la[:, 0], g.lat_centers())
    np.testing.assert_allclose(lo[0], g.lon_centers())


def test_bad_points_and_grids() -> None:
    g = Grid(4, 8)
    with pytest.raises(ValueError, match="outside lat"):
        g.pixel_of([91.0], [0.0])
    with pytest.raises(ValueError, match="index 1"):
        g.pixel_of([0.0, np.nan], [0.0, 0.0])
    with pytest.raises(ValueError, match="twice"):
        Grid(4, 9)
    with pytest.raises(ValueError, match="landscan.tif: native size 10 x 20 is not a multiple"):
        g.factor_of(10, 20, what="landscan.tif")
    assert g.factor_of(48, 96) == 12
