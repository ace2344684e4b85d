"""The common equirectangular grid shared by every mask, prediction and evaluation (DESIGN section 2).

Row ``i`` (0 = north) spans latitudes ``[90 - (i+1)*180/H, 90 - i*180/H]``; column ``j`` spans longitudes
``[-180 + j*360/W, -180 + (j+1)*360/W]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from affine import Affine

from geoens.core.constants import EARTH_RADIUS_KM
from geoens.core.types import FloatArray, IntArray


@dataclass(frozen=True)
class Grid:
    """An ``H x W`` lat/lon grid covering the globe, with ``W == 2 * H``.

    Attributes:
        height: Number of rows (latitude).
        width: Number of columns (longitude).
        earth_radius_km: Sphere radius used for pixel areas.
    """

    height: int
    width: int
    earth_radius_km: float = EARTH_RADIUS_KM

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"grid size must be positive, got {self.height} x {self.width}")
        if self.width != 2 * self.height:
            raise ValueError(f"grid width must be twice its height, got {self.height} x {self.width}")

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self.height, self.width)

    @property
    def transform(self) -> Affine:
        """The rasterio affine transform (EPSG:4326, north-up)."""
        return Affine(360.0 / self.width, 0.0, -180.0, 0.0, -180.0 / self.height, 90.0)

    def row_edges(self) -> FloatArray:
        """Latitudes of the ``H + 1`` row edges, north to south."""
        return 90.0 - np.arange(self.height + 1, dtype=np.float64) * (180.0 / self.height)

    def lat_centers(self) -> FloatArray:
        """Latitude of each row centre, north to south."""
        return 90.0 - (np.arange(self.height, dtype=np.float64) + 0.5) * (180.0 / self.height)

    def lon_centers(self) -> FloatArray:
        """Longitude of each column centre, west to east."""
        return -180.0 + (np.arange(self.width, dtype=np.float64) + 0.5) * (360.0 / self.width)

    def row_areas(self) -> FloatArray:
        """Area (km^2) of one pixel in each row: ``R^2 * (2 pi / W) * (sin(lat_top) - sin(lat_bottom))``."""
        edges = np.deg2rad(self.row_edges())
        return self.earth_radius_km**2 * (2.0 * np.pi / self.width) * (np.sin(edges[:-1]) - np.sin(edges[1:]))

    def pixel_areas(self) -> FloatArray:
        """Full ``H x W`` array of pixel areas (km^2); prefer :meth:`row_areas` where a row suffices."""
        return np.broadcast_to(self.row_areas()[:, None], self.shape).copy()

    def total_area(self) -> float:
        """Area of the sphere, ``4 pi R^2`` (km^2)."""
        return float(4.0 * np.pi * self.earth_radius_km**2)

    def rows(self, lat: npt.ArrayLike) -> IntArray:
        """Row index of each latitude (``lat = -90`` falls in the last row)."""
        lat_a = np.asarray(lat, dtype=np.float64)
        r = np.floor((90.0 - lat_a) * (self.height / 180.0)).astype(np.int64)
        return np.clip(r, 0, self.height - 1)

    def cols(self, lon: npt.ArrayLike) -> IntArray:
        """Column index of each longitude (wraps, so ``lon = 180`` is column 0)."""
        lon_a = np.asarray(lon, dtype=np.float64)
        return np.mod(np.floor((lon_a + 180.0) * (self.width / 360.0)).astype(np.int64), self.width)

    def pixel_of(self, lat: npt.ArrayLike, lon: npt.ArrayLike) -> tuple[IntArray, IntArray]:
        """``(rows, cols)`` of the pixels containing the given points.

        Raises:
            ValueError: If a latitude is outside [-90, 90] or a coordinate is not finite.
        """
        lat_a = np.asarray(lat, dtype=np.float64)
        lon_a = np.asarray(lon, dtype=np.float64)
        bad = ~np.isfinite(lat_a) | ~np.isfinite(lon_a) | (np.abs(lat_a) > 90.0)
        if np.any(bad):
            i = int(np.flatnonzero(bad.ravel())[0])
            raise ValueError(
                f"{int(bad.sum())} point(s) outside lat [-90, 90] or not finite; first at index {i}: "
                f"({lat_a.ravel()[i]}, {lon_a.ravel()[i]})"
            )
        return self.rows(lat_a), self.cols(lon_a)

    def flat_index(self, lat: npt.ArrayLike, lon: npt.ArrayLike) -> IntArray:
        """Row-major flat pixel index of each point."""
        r, c = self.pixel_of(lat, lon)
        return r * self.width + c

    def pixel_center(self, rows: npt.ArrayLike, cols: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """``(lat, lon)`` of pixel centres."""
        r = np.asarray(rows, dtype=np.float64)
        c = np.asarray(cols, dtype=np.float64)
        return 90.0 - (r + 0.5) * (180.0 / self.height), -180.0 + (c + 0.5) * (360.0 / self.width)

    def factor_of(self, native_height: int, native_width: int, what: str = "raster") -> int:
        """Integer downsampling factor from a native global raster to this grid.

        Raises:
            ValueError: If the native size is not an integer multiple of the grid, naming ``what``.
        """
        if native_height % self.height or native_width % self.width:
            raise ValueError(
                f"{what}: native size {native_height} x {native_width} is not a multiple of the grid "
                f"{self.height} x {self.width}"
            )
        fy, fx = native_height // self.height, native_width // self.width
        if fy != fx:
            raise ValueError(
                f"{what}: native pixels are not square on the grid (factors {fy} rows x {fx} columns)"
            )
        return fy


def latlon_to_xyz(lat: npt.ArrayLike, lon: npt.ArrayLike) -> FloatArray:
    """Unit vectors (``... x 3``) of points given in degrees."""
    la = np.deg2rad(np.asarray(lat, dtype=np.float64))
    lo = np.deg2rad(np.asarray(lon, dtype=np.float64))
    cl = np.cos(la)
    return np.stack([cl * np.cos(lo), cl * np.sin(lo), np.sin(la)], axis=-1)


def xyz_to_latlon(xyz: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Degrees ``(lat, lon)`` of (not necessarily unit) vectors ``... x 3``."""
    v = np.asarray(xyz, dtype=np.float64)
    lat = np.rad2deg(np.arctan2(v[..., 2], np.hypot(v[..., 0], v[..., 1])))
    lon = np.rad2deg(np.arctan2(v[..., 1], v[..., 0]))
    return lat, lon


def haversine_km(
    lat1: npt.ArrayLike, lon1: npt.ArrayLike, lat2: npt.ArrayLike, lon2: npt.ArrayLike, radius_km: float
) -> FloatArray:
    """Great-circle distance by the haversine formula (GeoEstimation uses ``radius_km = 6371``)."""
    p1, p2 = np.deg2rad(np.asarray(lat1, float)), np.deg2rad(np.asarray(lat2, float))
    dphi = p2 - p1
    dlmb = np.deg2rad(np.asarray(lon2, float) - np.asarray(lon1, float))
    a = np.sin(dphi / 2.0) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2.0) ** 2
    km: npt.NDArray[np.float64] = 2.0 * radius_km * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    return km
