"""The demo world itself: smooth fields on the sphere, the population and land cover rasters, geotags.

The world is a set of smooth random fields on the sphere (land, temperature, moisture, regional style),
evaluated at the native pixel centres of each raster, so that it is seamless at the antimeridian and the
same world at every resolution of a given config. The population raster has most land near-empty and
cities as Gaussian blobs of log-normal total population; the land cover (real LCCS codes) is consistent
with it: water (210) exactly where the population raster is nodata, urban (190) where it is high.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from geoens.core.constants import LANDSCAN_NODATA, lc_lookup_tables
from geoens.core.grid import Grid
from geoens.demo.spec import F32, F64, I64, STYLES, U8, DemoSpec, pixel_centres, pixel_km2, stream_rng

#: Share of the sphere's area that is land.
LAND_FRACTION: Final[float] = 0.29
#: Share of Flickr-like geotags drawn in proportion to the square root of population (spread).
FLICKR_SPREAD: Final[float] = 0.5
#: Land cover is urban (190) where log10(people per population cell) + noise exceeds this.
URBAN_LOG10_POP: Final[float] = 4.3

_TO_TOP, _TO_CLASS = lc_lookup_tables()
TO_TOP: Final[U8] = np.asarray(_TO_TOP, dtype=np.uint8)
TO_CLASS: Final[npt.NDArray[np.int8]] = np.asarray(_TO_CLASS, dtype=np.int8)


# --------------------------------------------------------------------------------------------------
# smooth fields on the sphere
# --------------------------------------------------------------------------------------------------
class SphereField:
    """A smooth random field on the sphere: a sum of random 3-D plane waves restricted to the unit sphere.

    Seamless at the antimeridian and the poles; standard deviation about 1; wavelengths about
    ``2 pi / freq`` radians.
    """

    def __init__(self, rng: np.random.Generator, n_waves: int, freq: float) -> None:
        d = rng.normal(size=(n_waves, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        self.w = d * (freq * rng.uniform(0.6, 1.4, size=n_waves))[:, None]
        self.phase = rng.uniform(0.0, 2.0 * np.pi, size=n_waves)
        self.scale = math.sqrt(2.0 / n_waves)

    def on_grid(self, lat: npt.ArrayLike, lon: npt.ArrayLike) -> F32:
        """Values on the outer product of row latitudes and column longitudes (degrees)."""
        la = np.deg2rad(np.asarray(lat, np.float64))[:, None]
        lo = np.deg2rad(np.asarray(lon, np.float64))[None, :]
        cl, sl = np.cos(la).astype(np.float32), np.sin(la).astype(np.float32)
        co, so = np.cos(lo).astype(np.float32), np.sin(lo).astype(np.float32)
        out = np.zeros((la.shape[0], lo.shape[1]), np.float32)
        for (wx, wy, wz), ph in zip(self.w, self.phase, strict=True):
            out += np.cos(cl * (np.float32(wx) * co + np.float32(wy) * so) + (np.float32(wz) * sl + ph))
        out *= np.float32(self.scale)
        return out

    def at(self, lat: npt.ArrayLike, lon: npt.ArrayLike) -> F64:
        """Values at points (degrees)."""
        la = np.deg2rad(np.asarray(lat, np.float64))
        lo = np.deg2rad(np.asarray(lon, np.float64))
        xyz = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)
        return np.asarray(np.cos(xyz @ self.w.T + self.phase).sum(axis=-1) * self.scale, np.float64)


@dataclass
class WorldFields:
    """The smooth fields every raster and image of one world is made of."""

    land: SphereField
    coast: SphereField
    temp: SphereField
    moist: SphereField
    patch: SphereField
    style: tuple[SphereField, SphereField, SphereField, SphereField]
    land_threshold: float = 0.0

    @classmethod
    def from_seed(cls, seed: int) -> WorldFields:
        """Draw the fields of the world of ``seed``."""
        rng = stream_rng(seed, "fields")
        return cls(
            land=SphereField(rng, 40, 4.0),
            coast=SphereField(rng, 32, 12.0),
            temp=SphereField(rng, 16, 3.0),
            moist=SphereField(rng, 24, 4.0),
            patch=SphereField(rng, 32, 25.0),
            style=(
                SphereField(rng, 16, 2.0),
                SphereField(rng, 16, 2.0),
                SphereField(rng, 16, 2.0),
                SphereField(rng, 16, 3.0),
            ),
        )

    def land_value(self, lat: F64, lon: F64) -> F32:
        """Continent field on a grid (land where above ``land_threshold``)."""
        return self.land.on_grid(lat, lon) + np.float32(0.4) * self.coast.on_grid(lat, lon)


def _weighted_quantile(values: F32, weights: F64, q: float) -> float:
    order = np.argsort(values, axis=None, kind="stable")
    v = values.ravel()[order]
    w = np.cumsum(weights.ravel()[order])
    return float(v[min(int(np.searchsorted(w, q * w[-1])), v.size - 1)])


# --------------------------------------------------------------------------------------------------
# population (LandScan-like)
# --------------------------------------------------------------------------------------------------
@dataclass
class Climate:
    """Per-pixel climate of the population raster (all ``ls_shape``, float32)."""

    land_margin: F32  # continent field minus threshold (> 0 on land)
    temp: F32  # 0 at the poles, 1 at the equator, plus noise
    moist: F32  # about N(0, 1), dry in the subtropics and inland
    suit: F32  # habitability in [0, 1]
    patch: F32  # small-scale noise (about N(0, 1)) for patches of land cover


def _climate(fields: WorldFields, lat: F64, lon: F64, land: F32) -> Climate:
    alat = np.abs(lat)[:, None].astype(np.float32)
    temp = 1.0 - alat / 90.0 + np.float32(0.08) * fields.temp.on_grid(lat, lon)
    dry_band = np.exp(-(((alat - 24.0) / 9.0) ** 2)).astype(np.float32)
    margin = land - np.float32(fields.land_threshold)
    inland = np.clip(margin, 0.0, 1.0)
    moist = (
        np.float32(0.8) * fields.moist.on_grid(lat, lon)
        - np.float32(1.2) * dry_band
        - np.float32(0.3) * inland
        + np.float32(0.45)
    )
    suit = np.clip((temp - 0.3) / 0.5, 0.0, 1.0) * (1.0 / (1.0 + np.exp(-3.0 * (moist + 0.6))))
    patch = fields.patch.on_grid(lat, lon)
    return Climate(margin, temp.astype(np.float32), moist.astype(np.float32), suit.astype(np.float32), patch)


def make_landscan(spec: DemoSpec, fields: WorldFields | None = None) -> tuple[npt.NDArray[np.int32], Climate]:
    """Make the population raster (people per cell, int32, water = :data:`LANDSCAN_NODATA`) and climate.

    Sets ``fields.land_threshold`` so that :data:`LAND_FRACTION` of the sphere's area is land.
    """
    fields = fields or WorldFields.from_seed(spec.seed)
    h, w = spec.ls_shape
    lat = pixel_centres(h, -90.0, 90.0, descending=True)
    lon = pixel_centres(w, -180.0, 180.0)
    land = fields.land_value(lat, lon)
    area_w = np.broadcast_to(np.cos(np.deg2rad(lat))[:, None], land.shape)
    fields.land_threshold = _weighted_quantile(land, area_w, 1.0 - LAND_FRACTION)
    clim = _climate(fields, lat, lon, land)
    is_land = clim.land_margin > 0
    rng = stream_rng(spec.seed, "population")

    # Rural population: most land near-empty, log-normal where people live at all.
    rural = clim.suit**2 * np.exp(rng.normal(2.0, 1.5, size=(h, w))).astype(np.float32)
    rural[rng.random((h, w)) < 0.5] = 0.0
    pop = np.where(is_land, rural, 0.0).astype(np.float64)

    # Settlements: Gaussian blobs with log-normal totals (towns and cities), centred on habitable land.
    n_land = int(is_land.sum())
    n_cities = int(np.clip(n_land / 500, 20, 2000))
    n_towns = 6 * n_cities
    wts = np.where(is_land, clim.suit.astype(np.float64) ** 3, 0.0).ravel()
    if wts.sum() <= 0:
        wts = is_land.ravel().astype(np.float64)
    centres = rng.choice(h * w, size=n_cities + n_towns, replace=True, p=wts / wts.sum())
    totals = np.concatenate(
        [10.0 ** rng.normal(4.6, 0.65, size=n_cities), 10.0 ** rng.normal(2.8, 0.5, size=n_towns)]
    )
    totals = np.minimum(totals, 4e7)
    radii = np.clip(0.5 * (totals / 1e5) ** 0.3, 0.35, 5.0)
    for c, tot, r in zip(centres, totals, radii, strict=True):
        i0, j0 = divmod(int(c), w)
        half = int(math.ceil(2.5 * r))
        rows = np.arange(max(0, i0 - half), min(h, i0 + half + 1))
        dcols = np.arange(-half, half + 1)
        if dcols.size >= w:
            dcols = np.arange(w) - w // 2
        cols = (j0 + dcols) % w
        k = np.exp(-(((rows - i0)[:, None] ** 2 + dcols[None, :] ** 2) / (2 * r * r)))
        pop[np.ix_(rows, cols)] += tot * k / k.sum()
    out = np.where(is_land, np.rint(pop), LANDSCAN_NODATA).astype(np.int32)
    return out, clim


# --------------------------------------------------------------------------------------------------
# land cover (ESA-CCI-like)
# --------------------------------------------------------------------------------------------------
def native_index(n_out: int, n_in: int) -> I64:
    """Index of the coarser raster's pixel containing each finer pixel centre (1-D)."""
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def _pick(u: F32, options: tuple[int, ...]) -> npt.NDArray[np.uint8]:
    """Choose among ``options`` by the uniform noise ``u`` (for regional subclasses)."""
    idx = np.minimum((u * len(options)).astype(np.int64), len(options) - 1)
    return np.asarray(options, np.uint8)[idx]


def classify_strip(
    temp: F32, moist: F32, margin: F32, pop: npt.NDArray[np.int32], patch: F32, u: F32
) -> npt.NDArray[np.uint8]:
    """LCCS codes of one strip of land cover pixels from their climate, population and noise."""
    t, m = temp, moist
    code = np.full(t.shape, 130, np.uint8)  # grassland by default

    def put(mask: npt.NDArray[np.bool_], value: int | np.uint8 | npt.NDArray[np.uint8]) -> None:
        np.copyto(code, value, where=mask, casting="unsafe")

    put((m > -0.6) & (m <= 0.2) & (t > 0.55), _pick(u, (120, 121, 122, 120)))  # shrubland
    put((m > -0.1) & (m <= 0.25) & (t > 0.45) & (patch > 0.3), np.uint8(100))  # tree/shrub mosaic
    put((m > 0.25) & (t > 0.8), np.uint8(50))  # broadleaf evergreen
    put((m > 0.2) & (t > 0.55) & (t <= 0.8), _pick(u, (60, 61, 62)))  # broadleaf deciduous
    put((m > 0.1) & (t > 0.5) & (t <= 0.62) & (patch > 0.0), np.uint8(90))  # mixed
    put((m > -0.2) & (t > 0.3) & (t <= 0.55), _pick(u, (70, 71, 72, 70)))  # needleleaf evergreen
    put((m > -0.2) & (t > 0.25) & (t <= 0.38) & (patch > 0.2), _pick(u, (80, 81, 82)))  # needle deciduous
    put((t > 0.2) & (t <= 0.3), np.uint8(140))  # lichens and mosses (tundra)
    put((m > -1.2) & (m <= -0.6), _pick(u, (150, 151, 152, 153)))  # sparse vegetation
    put(m <= -1.2, _pick(u, (200, 201, 202)))  # bare (deserts)
    put((m > 0.4) & (t > 0.65) & (patch > 0.9), np.uint8(160))  # flooded forest
    put((m > 0.3) & (t <= 0.65) & (t > 0.3) & (patch > 1.0), np.uint8(180))  # flooded shrub/herbaceous
    put((margin < 0.06) & (t > 0.75) & (m > 0.0), np.uint8(170))  # mangroves on tropical coasts
    put(t <= 0.2, np.uint8(220))  # snow and ice
    # Cropland where people farm: moderate population, not too dry or cold.
    lp = np.log10(np.maximum(pop, 0).astype(np.float32) + 1.0)
    farm = (lp + 0.8 * patch > 2.6) & (t > 0.4) & (m > -0.9)
    put(farm & (m > -0.3), _pick(u, (10, 11, 12, 10, 30, 40)))
    put(farm & (m <= -0.3), np.uint8(20))  # irrigated in dry places
    put(lp + 0.25 * patch > URBAN_LOG10_POP, np.uint8(190))  # urban
    put(pop < 0, np.uint8(210))  # water exactly where the population raster is nodata
    return code


def make_landcover(
    spec: DemoSpec, ls: npt.NDArray[np.int32], clim: Climate, fields: WorldFields | None = None
) -> npt.NDArray[np.uint8]:
    """Make the land cover raster (LCCS codes, uint8), consistent with the population raster ``ls``."""
    fields = fields or WorldFields.from_seed(spec.seed)
    h, w = spec.lc_shape
    hs, ws = ls.shape
    ri, ci = native_index(h, hs), native_index(w, ws)
    rng = stream_rng(spec.seed, "landcover")
    out = np.empty((h, w), np.uint8)
    strip = max(1, 2_000_000 // w)
    for r0 in range(0, h, strip):
        r1 = min(h, r0 + strip)
        rr = ri[r0:r1, None]
        u = rng.random((r1 - r0, w), dtype=np.float32)
        out[r0:r1] = classify_strip(
            clim.temp[rr, ci], clim.moist[rr, ci], clim.land_margin[rr, ci], ls[rr, ci], clim.patch[rr, ci], u
        )
    return out


# --------------------------------------------------------------------------------------------------
# geotags
# --------------------------------------------------------------------------------------------------
def _sample_pixels(weights: F64, n: int, rng: np.random.Generator, shape: tuple[int, int]) -> tuple[F64, F64]:
    """``n`` points: pixels drawn in proportion to ``weights``, then uniform inside the pixel."""
    cdf = np.cumsum(weights.ravel())
    if cdf[-1] <= 0:
        raise ValueError("demo world: no pixel has positive sampling weight")
    flat = np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), cdf.size - 1)
    h, w = shape
    rows, cols = np.divmod(flat, w)
    lat = 90.0 - (rows + rng.random(n)) * (180.0 / h)
    lon = -180.0 + (cols + rng.random(n)) * (360.0 / w)
    return lat, lon


def sample_geotags(
    ls: npt.NDArray[np.int32], n: int, style: str, rng: np.random.Generator
) -> tuple[F64, F64]:
    """Draw geotags over the population raster.

    ``flickr``: in proportion to population, except a share :data:`FLICKR_SPREAD` in proportion to
    ``population ** 0.4`` (some spread), as Flickr's photos cluster where people live.
    ``streetview``: in proportion to ``population ** 0.3 + 0.3`` over land away from the polar caps
    (roads everywhere people are; mostly rural).
    """
    pop = np.where(ls == LANDSCAN_NODATA, 0, ls).astype(np.float64)
    if style == "flickr":
        n_spread = int(round(FLICKR_SPREAD * n))
        a = _sample_pixels(pop, n - n_spread, rng, ls.shape)
        b = _sample_pixels(pop**0.4, n_spread, rng, ls.shape)
        lat, lon = np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])
        order = rng.permutation(n)
        return lat[order], lon[order]
    if style == "streetview":
        h = ls.shape[0]
        alat = np.abs(90.0 - (np.arange(h) + 0.5) * (180.0 / h))[:, None]
        wts = np.where((ls != LANDSCAN_NODATA) & (alat < 66.0), pop**0.3 + 0.3, 0.0)
        return _sample_pixels(wts, n, rng, ls.shape)
    raise ValueError(f"unknown geotag style {style!r}; expected one of {STYLES}")


def _lookup(raster: npt.NDArray[Any], lat: F64, lon: F64) -> npt.NDArray[Any]:
    g = Grid(raster.shape[0], raster.shape[1]) if raster.shape[1] == 2 * raster.shape[0] else None
    if g is None:
        raise ValueError(f"demo world: raster shape {raster.shape} is not global H x 2H")
    r, c = g.pixel_of(lat, lon)
    return raster[r, c]


@dataclass
class RenderInputs:
    """Per-image inputs of the renderer (all length ``n``)."""

    lc_code: U8
    pop: F64  # the population raster's value (people per native cell)
    lat: F64
    lon: F64
    scene_pop: F64 | None = None  # people the renderer draws, when not ``pop`` (a density on Earth)

    def shown_population(self) -> F64:
        """The population the images show: ``scene_pop`` when set, else ``pop``."""
        return self.pop if self.scene_pop is None else self.scene_pop


# --------------------------------------------------------------------------------------------------
# the whole world
# --------------------------------------------------------------------------------------------------
@dataclass
class World:
    """The rasters of one demo world (kept in memory for sampling and rendering)."""

    spec: DemoSpec
    fields: WorldFields
    ls: npt.NDArray[np.int32]
    lc: npt.NDArray[np.uint8]
    #: People per km2 at a photo -> people its image shows; ``None``: the image shows people per native cell.
    scene_population: Callable[[F64], F64] | None = None

    @classmethod
    def build(cls, spec: DemoSpec) -> World:
        """Generate the population and land cover rasters of ``spec``."""
        fields = WorldFields.from_seed(spec.seed)
        ls, clim = make_landscan(spec, fields)
        lc = make_landcover(spec, ls, clim, fields)
        return cls(spec, fields, ls, lc)

    def attributes(self, lat: F64, lon: F64) -> RenderInputs:
        """Land cover code and population at points (native pixels containing them)."""
        ls = _lookup(self.ls, lat, lon).astype(np.float64)
        pop = np.where(ls < 0, 0.0, ls)
        scene = None
        if self.scene_population is not None:
            h, w = self.ls.shape
            rows, _ = Grid(h, w).pixel_of(lat, lon)
            scene = self.scene_population(pop / pixel_km2(h, w)[rows])
        return RenderInputs(_lookup(self.lc, lat, lon).astype(np.uint8), pop, lat, lon, scene)
