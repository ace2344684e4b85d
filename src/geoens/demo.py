"""The embedded synthetic demo world (DESIGN section 6): every workflow input, generated from one seed.

The world is a set of smooth random fields on the sphere (land, temperature, moisture, regional style),
evaluated at the native pixel centres of each raster, so that it is seamless at the antimeridian and the
same world at every resolution of a given config:

* a LandScan-like population raster (int32 people per cell, water = nodata -2147483647), where most land is
  near-empty and cities are Gaussian blobs of log-normal total population;
* an ESA-CCI-like land cover raster of real LCCS codes (NetCDF laid out like ESA's files, ``lccs_class`` int8
  with ``_Unsigned="true"``, or a uint8 GeoTIFF), consistent with the population: water (210) exactly where
  the population raster is nodata, urban (190) where the population is high;
* an MP-16-like training set (msgpack shards of ``{"id", "image"}`` plus ``IMG_ID,LAT,LON`` metadata) whose
  geotags are drawn in proportion to population, as Flickr's are;
* Im2GPS3k-like (``flickr``: urban-heavy, same camera) and Street-View-like (``streetview``: rural-heavy,
  another camera) test sets as image folders plus metadata;
* contact sheets of the rendered images grouped by land-cover class and population bucket.

Images are rendered, vectorised over a batch, from the land cover at the point, the population (farmsteads
from ~10 people per cell, town and city buildings from a few hundred) and a smooth regional style (tint,
texture orientation, sky), with noise and occasional look-alike classes, so attributes are visible with
realistic confusion and location is only partly inferable.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import msgpack
import numpy as np
import numpy.typing as npt
import rasterio
from PIL import Image, ImageDraw, ImageFont

from geoens.config import ConfigError, grid_from_config
from geoens.constants import LANDSCAN_NODATA, LC_CLASSES, LC_NODATA, LS_BUCKETS, lc_lookup_tables
from geoens.grid import Grid
from geoens.io import atomic_path

log = logging.getLogger("geoens.demo")

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

#: Text put on every figure and file made from the demo world.
DEMO_LABEL: Final[str] = "synthetic demo world"
#: Share of the sphere's area that is land.
LAND_FRACTION: Final[float] = 0.29
#: Images rendered per vectorised batch (fixed, so that results do not depend on memory).
BATCH: Final[int] = 256
#: Share of Flickr-like geotags drawn in proportion to the square root of population (spread).
FLICKR_SPREAD: Final[float] = 0.5
#: Land cover is urban (190) where log10(people per population cell) + noise exceeds this.
URBAN_LOG10_POP: Final[float] = 4.3
#: Styles of test sets: ``flickr`` (urban-heavy, training camera), ``streetview`` (rural, other camera).
STYLES: Final[tuple[str, ...]] = ("flickr", "streetview")

#: Names of the LCCS codes the demo uses (ESA CCI LC product user guide), for ``flag_meanings``.
LCCS_NAMES: Final[dict[int, str]] = {
    0: "no_data",
    10: "cropland_rainfed",
    11: "cropland_rainfed_herbaceous_cover",
    12: "cropland_rainfed_tree_or_shrub_cover",
    20: "cropland_irrigated",
    30: "mosaic_cropland",
    40: "mosaic_natural_vegetation",
    50: "tree_broadleaved_evergreen_closed_to_open",
    60: "tree_broadleaved_deciduous_closed_to_open",
    61: "tree_broadleaved_deciduous_closed",
    62: "tree_broadleaved_deciduous_open",
    70: "tree_needleleaved_evergreen_closed_to_open",
    71: "tree_needleleaved_evergreen_closed",
    72: "tree_needleleaved_evergreen_open",
    80: "tree_needleleaved_deciduous_closed_to_open",
    81: "tree_needleleaved_deciduous_closed",
    82: "tree_needleleaved_deciduous_open",
    90: "tree_mixed",
    100: "mosaic_tree_and_shrub",
    110: "mosaic_herbaceous",
    120: "shrubland",
    121: "shrubland_evergreen",
    122: "shrubland_deciduous",
    130: "grassland",
    140: "lichens_and_mosses",
    150: "sparse_vegetation",
    151: "sparse_tree",
    152: "sparse_shrub",
    153: "sparse_herbaceous",
    160: "tree_cover_flooded_fresh_or_brakish_water",
    170: "tree_cover_flooded_saline_water",
    180: "shrub_or_herbaceous_cover_flooded",
    190: "urban",
    200: "bare_areas",
    201: "bare_areas_consolidated",
    202: "bare_areas_unconsolidated",
    210: "water",
    220: "snow_and_ice",
}

_TO_TOP, _TO_CLASS = lc_lookup_tables()
TO_TOP: Final[U8] = np.asarray(_TO_TOP, dtype=np.uint8)
TO_CLASS: Final[npt.NDArray[np.int8]] = np.asarray(_TO_CLASS, dtype=np.int8)


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoSpec:
    """What the demo generator needs from a config.

    Attributes:
        grid: The common grid.
        seed: Seed of everything.
        ls_factor: Population raster resolution, in native pixels per grid pixel.
        lc_factor: Land cover raster resolution, in native pixels per grid pixel.
        lc_format: ``netcdf`` or ``geotiff``.
        n_train: Number of training images.
        n_shards: Number of msgpack shards.
        image_size: Side of the square images (pixels).
        testsets: ``name -> (n, style)``.

    """

    grid: Grid
    seed: int
    ls_factor: int
    lc_factor: int
    lc_format: str
    n_train: int
    n_shards: int
    image_size: int
    testsets: dict[str, tuple[int, str]]

    @property
    def ls_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the population raster."""
        return self.ls_factor * self.grid.height, self.ls_factor * self.grid.width

    @property
    def lc_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the land cover raster."""
        return self.lc_factor * self.grid.height, self.lc_factor * self.grid.width


def spec_from_config(cfg: Mapping[str, Any]) -> DemoSpec:
    """Read the ``seed``, ``grid`` and ``demo`` sections of a (validated) config.

    Raises:
        ConfigError: Naming the key, on a missing section or an unknown test-set style.

    """
    if "demo" not in cfg:
        raise ConfigError("config key 'demo': missing (the demo generator needs demo settings)")
    d = cfg["demo"]
    testsets: dict[str, tuple[int, str]] = {}
    for name, ts in dict(d.get("testsets", {})).items():
        style = ts.get("style")
        if style not in STYLES:
            raise ConfigError(f"config key 'demo.testsets.{name}.style': {style!r} is not one of {STYLES}")
        n = int(ts.get("n", 0))
        if n < 1:
            raise ConfigError(f"config key 'demo.testsets.{name}.n': must be >= 1, got {n}")
        testsets[str(name)] = (n, str(style))
    lc_format = str(d.get("lc_format", "netcdf"))
    if lc_format not in ("netcdf", "geotiff"):
        raise ConfigError(f"config key 'demo.lc_format': {lc_format!r} is not netcdf or geotiff")
    return DemoSpec(
        grid=grid_from_config(cfg),
        seed=int(cfg.get("seed", 0)),
        ls_factor=int(d.get("ls_factor", 4)),
        lc_factor=int(d.get("lc_factor", 12)),
        lc_format=lc_format,
        n_train=int(d.get("n_train", 6000)),
        n_shards=int(d.get("n_shards", 4)),
        image_size=int(d.get("image_size", 64)),
        testsets=testsets,
    )


def output_paths(cfg: Mapping[str, Any]) -> dict[str, Path]:
    """Return the files and folders :func:`generate_world` writes, from the config's ``inputs`` section.

    Keys: ``landscan``, ``landcover``, ``train_shards`` (folder), ``train_metadata``,
    ``train_contact_sheet``, and per test set ``<name>_images`` (folder), ``<name>_metadata``,
    ``<name>_contact_sheet``. Contact sheets go beside the population raster as
    ``contact_sheet_<name>.png`` (``<name>`` of the training set is ``inputs.train.name``).

    Raises:
        ConfigError: If the demo's test sets differ from ``inputs.testsets`` or the land cover path's
            extension does not match ``demo.lc_format``.

    """
    inp = cfg["inputs"]
    spec = spec_from_config(cfg)
    if set(spec.testsets) != set(inp["testsets"]):
        raise ConfigError(
            f"config key 'demo.testsets': names {sorted(spec.testsets)} must equal those of "
            f"'inputs.testsets' {sorted(inp['testsets'])}"
        )
    lc = Path(inp["landcover"])
    want = (".nc",) if spec.lc_format == "netcdf" else (".tif", ".tiff")
    if lc.suffix.lower() not in want:
        raise ConfigError(
            f"config key 'inputs.landcover': {lc} should end in {' or '.join(want)} for "
            f"demo.lc_format={spec.lc_format}"
        )
    root = Path(inp["landscan"]).parent
    train_name = inp["train"].get("name", "mp16")
    out: dict[str, Path] = {
        "landscan": Path(inp["landscan"]),
        "landcover": lc,
        "train_shards": Path(inp["train"]["shards_dir"]),
        "train_metadata": Path(inp["train"]["metadata"]),
        "train_contact_sheet": root / f"contact_sheet_{train_name}.png",
    }
    for name in sorted(spec.testsets):
        out[f"{name}_images"] = Path(inp["testsets"][name]["images"])
        out[f"{name}_metadata"] = Path(inp["testsets"][name]["metadata"])
        out[f"{name}_contact_sheet"] = root / f"contact_sheet_{name}.png"
    return out


def _rng(seed: int, *stream: int | str) -> np.random.Generator:
    """Return an independent, reproducible random stream for ``(seed, *stream)``."""
    keys = [seed] + [zlib.crc32(s.encode()) if isinstance(s, str) else int(s) for s in stream]
    return np.random.default_rng(keys)


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
        rng = _rng(seed, "fields")
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


def _centres(n: int, lo: float, hi: float, descending: bool = False) -> F64:
    """Centres of ``n`` equal bins between ``lo`` and ``hi``."""
    c = lo + (np.arange(n, dtype=np.float64) + 0.5) * ((hi - lo) / n)
    return c[::-1].copy() if descending else c


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
    lat = _centres(h, -90.0, 90.0, descending=True)
    lon = _centres(w, -180.0, 180.0)
    land = fields.land_value(lat, lon)
    area_w = np.broadcast_to(np.cos(np.deg2rad(lat))[:, None], land.shape)
    fields.land_threshold = _weighted_quantile(land, area_w, 1.0 - LAND_FRACTION)
    clim = _climate(fields, lat, lon, land)
    is_land = clim.land_margin > 0
    rng = _rng(spec.seed, "population")

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


def write_landscan(path: str | Path, ls: npt.NDArray[np.int32]) -> None:
    """Write the population raster as a LandScan-like int32 GeoTIFF (EPSG:4326, global, no overviews)."""
    h, w = ls.shape
    profile = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": 1,
        "dtype": "int32",
        "crs": "EPSG:4326",
        "transform": Grid(h, w).transform,
        "nodata": LANDSCAN_NODATA,
        "compress": "deflate",
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(ls, 1)
        dst.update_tags(source=f"geoens {DEMO_LABEL}", units="people per cell")


# --------------------------------------------------------------------------------------------------
# land cover (ESA-CCI-like)
# --------------------------------------------------------------------------------------------------
def _native_index(n_out: int, n_in: int) -> I64:
    """Index of the coarser raster's pixel containing each finer pixel centre (1-D)."""
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def _pick(u: F32, options: tuple[int, ...]) -> npt.NDArray[np.uint8]:
    """Choose among ``options`` by the uniform noise ``u`` (for regional subclasses)."""
    idx = np.minimum((u * len(options)).astype(np.int64), len(options) - 1)
    return np.asarray(options, np.uint8)[idx]


def _classify_strip(
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
    ri, ci = _native_index(h, hs), _native_index(w, ws)
    rng = _rng(spec.seed, "landcover")
    out = np.empty((h, w), np.uint8)
    strip = max(1, 2_000_000 // w)
    for r0 in range(0, h, strip):
        r1 = min(h, r0 + strip)
        rr = ri[r0:r1, None]
        u = rng.random((r1 - r0, w), dtype=np.float32)
        out[r0:r1] = _classify_strip(
            clim.temp[rr, ci], clim.moist[rr, ci], clim.land_margin[rr, ci], ls[rr, ci], clim.patch[rr, ci], u
        )
    return out


def _lccs_flags() -> tuple[npt.NDArray[np.uint8], str]:
    codes = np.asarray(sorted(LCCS_NAMES), np.uint8)
    return codes, " ".join(LCCS_NAMES[int(c)] for c in codes)


#: The two encodings real ESA CCI LC NetCDF copies come in: ``byte`` = ``lccs_class`` NC_BYTE with
#: ``_Unsigned="true"`` in the NetCDF-4 classic model (ESA's own files); ``ubyte`` = NC_UBYTE (NetCDF-4).
LC_NETCDF_ENCODINGS: Final[tuple[str, ...]] = ("byte", "ubyte")


def write_landcover_netcdf(path: str | Path, lc: npt.NDArray[np.uint8], encoding: str = "byte") -> None:
    """Write land cover like ESA CCI LC's NetCDF (see :func:`write_lccs_netcdf`) from an array in memory."""
    write_lccs_netcdf(path, lc.shape, lambda r0, n: lc[r0 : r0 + n], encoding=encoding)


def write_lccs_netcdf(
    path: str | Path,
    shape: tuple[int, int],
    rows: Callable[[int, int], npt.NDArray[np.uint8]],
    encoding: str = "byte",
    strip: int = 2025,
    complevel: int = 4,
    title: str = f"ESA CCI Land Cover Map ({DEMO_LABEL})",
) -> None:
    """Write LCCS codes in ESA CCI LC's NetCDF layout, strip by strip: ``lccs_class(time, lat, lon)``.

    Latitudes descend (north first, as ESA's), a ``crs`` grid-mapping variable carries EPSG:4326, chunks are
    2025 x 2025 like ESA's. ``encoding="byte"``: NC_BYTE with ``_Unsigned="true"`` in the NetCDF-4 classic
    model, as ESA distributes it (codes above 127 are stored as negative int8; GDAL's netCDF driver reads
    ``_Unsigned`` bytes from the classic model as uint8, from the enhanced model it fails with "Numeric
    conversion not representable"). ``encoding="ubyte"``: NC_UBYTE (NetCDF-4), as re-encoded copies have it.

    Args:
        path: The file to write (atomically).
        shape: ``(rows, cols)`` of the global raster.
        rows: ``rows(r0, n)`` returns the ``n x cols`` uint8 codes of rows ``r0 .. r0 + n - 1``.
        encoding: ``byte`` or ``ubyte`` (:data:`LC_NETCDF_ENCODINGS`).
        strip: Rows written per call of ``rows``.
        complevel: zlib level.
        title: The file's ``title`` attribute.
    """
    import netCDF4

    if encoding not in LC_NETCDF_ENCODINGS:
        raise ValueError(f"NetCDF encoding {encoding!r}: expected one of {LC_NETCDF_ENCODINGS}")
    h, w = shape
    codes, meanings = _lccs_flags()
    fmt: Literal["NETCDF4_CLASSIC", "NETCDF4"] = "NETCDF4_CLASSIC" if encoding == "byte" else "NETCDF4"
    with atomic_path(path) as tmp, netCDF4.Dataset(tmp, "w", format=fmt) as ds:
        ds.title = title
        ds.Conventions = "CF-1.6"
        ds.source = "geoens"
        ds.geospatial_lat_min, ds.geospatial_lat_max = -90.0, 90.0
        ds.geospatial_lon_min, ds.geospatial_lon_max = -180.0, 180.0
        ds.createDimension("time", 1)
        ds.createDimension("lat", h)
        ds.createDimension("lon", w)
        t = ds.createVariable("time", "i4", ("time",))
        t.standard_name, t.units = "time", "days since 1970-01-01"
        t[:] = [16801]
        la = ds.createVariable("lat", "f8", ("lat",))
        la.standard_name, la.units, la.long_name = "latitude", "degrees_north", "latitude"
        la[:] = _centres(h, -90.0, 90.0, descending=True)
        lo = ds.createVariable("lon", "f8", ("lon",))
        lo.standard_name, lo.units, lo.long_name = "longitude", "degrees_east", "longitude"
        lo[:] = _centres(w, -180.0, 180.0)
        crs = ds.createVariable("crs", "i4")
        crs.grid_mapping_name = "latitude_longitude"
        crs.wkt = crs.crs_wkt = rasterio.crs.CRS.from_epsg(4326).to_wkt()
        crs.semi_major_axis, crs.inverse_flattening = 6378137.0, 298.257223563
        dtype = "i1" if encoding == "byte" else "u1"
        v = ds.createVariable(  # type: ignore[call-overload]  # complevel: int, not Literal[0..9]
            "lccs_class",
            dtype,
            ("time", "lat", "lon"),
            zlib=True,
            complevel=complevel,
            chunksizes=(1, min(h, 2025), min(w, 2025)),
            fill_value=np.int8(0) if encoding == "byte" else np.uint8(0),
        )
        v.set_auto_maskandscale(False)
        if encoding == "byte":
            v.setncattr("_Unsigned", "true")
        v.long_name = "Land cover class defined in LCCS"
        v.standard_name = "land_cover_lccs"
        v.grid_mapping = "crs"
        v.flag_values = codes.view(np.int8) if encoding == "byte" else codes
        v.flag_meanings = meanings
        for r0 in range(0, h, strip):
            n = min(strip, h - r0)
            block = np.ascontiguousarray(rows(r0, n), dtype=np.uint8)
            v[0, r0 : r0 + n, :] = block.view(np.int8) if encoding == "byte" else block


def write_landcover_geotiff(path: str | Path, lc: npt.NDArray[np.uint8]) -> None:
    """Write land cover as a uint8 GeoTIFF (EPSG:4326, global, nodata 0)."""
    h, w = lc.shape
    profile = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:4326",
        "transform": Grid(h, w).transform,
        "nodata": LC_NODATA,
        "compress": "deflate",
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(lc, 1)
        dst.update_tags(source=f"geoens {DEMO_LABEL}")


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


# --------------------------------------------------------------------------------------------------
# image rendering
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Camera:
    """How a test set's images are taken (the domain shift between Flickr and Street View)."""

    horizon: float  # mean horizon height, as a fraction of the image from the top
    horizon_sd: float
    zoom: float  # texture frequency multiplier (wider field of view = higher)
    balance: tuple[float, float, float]  # per-channel gain
    blur: int  # box blur passes
    road: bool
    jpeg_quality: int


CAMERAS: Final[dict[str, Camera]] = {
    "flickr": Camera(0.42, 0.07, 1.0, (1.0, 1.0, 1.0), 0, False, 90),
    "streetview": Camera(0.55, 0.03, 1.6, (1.08, 1.0, 0.84), 1, True, 80),
}

# Ground palettes per merged LC class: (colour A, colour B) mixed by the class's texture.
_PALETTE: Final[dict[int, tuple[tuple[float, float, float], tuple[float, float, float]]]] = {
    0: ((0.80, 0.74, 0.30), (0.45, 0.58, 0.20)),  # cropland: wheat / green stripes
    1: ((0.08, 0.35, 0.10), (0.20, 0.52, 0.16)),  # broadleaf: deep greens, blobs
    2: ((0.05, 0.22, 0.17), (0.16, 0.34, 0.24)),  # needleleaf/other tree: blue-green spikes
    3: ((0.62, 0.66, 0.36), (0.52, 0.60, 0.30)),  # short vegetation: khaki, smooth
    4: ((0.22, 0.46, 0.22), (0.25, 0.45, 0.62)),  # flooded: green with water
    5: ((0.46, 0.45, 0.44), (0.36, 0.36, 0.37)),  # urban: grey
    6: ((0.86, 0.76, 0.55), (0.74, 0.62, 0.42)),  # bare (water and snow override below)
}
_WATER = ((0.12, 0.30, 0.55), (0.22, 0.45, 0.70))
_SNOW = ((0.95, 0.96, 0.98), (0.78, 0.84, 0.92))
#: Farmstead colours (whitewashed wall, red-brown roof).
_HOUSE_WALL: Final[F64] = np.array([0.85, 0.80, 0.70])
_HOUSE_ROOF: Final[F64] = np.array([0.55, 0.22, 0.15])
#: Probability that an image's ground looks like another class (realistic confusion).
CONFUSION: Final[float] = 0.12


@dataclass
class RenderInputs:
    """Per-image inputs of the renderer (all length ``n``)."""

    lc_code: U8
    pop: F64
    lat: F64
    lon: F64


def _box_blur(img: F32) -> F32:
    p = np.pad(img, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    acc = np.zeros_like(img)
    s = img.shape[1]
    for dy in range(3):
        for dx in range(3):
            acc += p[:, dy : dy + s, dx : dx + s]
    return acc / np.float32(9.0)


def render_images(
    inputs: RenderInputs,
    image_size: int,
    style: str,
    seed: int,
    fields: WorldFields,
    stream: str = "images",
) -> U8:
    """Render ``n`` RGB images (``n x S x S x 3`` uint8) from land cover, population and regional style.

    Deterministic for ``(seed, stream)``; vectorised over batches of :data:`BATCH` images.
    """
    cam = CAMERAS[style]
    n = len(inputs.lc_code)
    s = image_size
    rng = _rng(seed, stream, "params")
    cls = TO_CLASS[inputs.lc_code].astype(np.int64)
    cls = np.where(cls < 0, 6, cls)
    top = TO_TOP[inputs.lc_code]
    # Look-alike classes: a share of images shows another class's ground (buildings stay truthful).
    confuse = rng.random(n) < CONFUSION
    shown = np.where(confuse, (cls + rng.integers(1, 7, n)) % 7, cls)
    shown_top = np.where(confuse, 0, top)
    # Regional style: smooth in lat/lon, so location is partly visible.
    st = np.stack([f.at(inputs.lat, inputs.lon) for f in fields.style], axis=1)
    tint = 0.07 * np.tanh(st[:, :3])
    angle = 0.8 * st[:, 3] + rng.normal(0.0, 0.35, n)
    alat = np.abs(inputs.lat)
    lp = np.log10(np.maximum(inputs.pop, 0.0) + 1.0)
    n_build = rng.poisson(np.clip(0.9 * (lp - 1.6), 0.0, None) ** 1.6)
    n_build = np.minimum(n_build, 14)
    # Farmsteads (sparse settlement): small houses with red-brown roofs from ~10 people per cell upward, so
    # that sparsely populated land looks different from empty land.
    n_huts = np.minimum(rng.poisson(np.clip(1.4 * (lp - 1.0), 0.0, 3.0)), 5)
    params = {
        "horizon": np.clip(cam.horizon + rng.normal(0, cam.horizon_sd, n), 0.2, 0.75),
        "freq": cam.zoom * rng.uniform(0.8, 1.25, n),
        "phase": rng.uniform(0, 2 * np.pi, (n, 4)),
        "gain": rng.uniform(0.8, 1.2, n),
        "mix": rng.uniform(-0.15, 0.15, (n, 3)),
        "sky": np.stack([0.45 + 0.25 * alat / 90, 0.62 + 0.1 * alat / 90, 0.92 - 0.1 * alat / 90], axis=1)
        + rng.normal(0, 0.05, (n, 3)),
        "cloud": rng.uniform(0, 1, n),
        "max_h": np.clip(0.08 + 0.07 * (lp - 2.0) + rng.normal(0, 0.04, n), 0.05, 0.6),
    }
    out = np.empty((n, s, s, 3), np.uint8)
    yy = ((np.arange(s, dtype=np.float32) + 0.5) / s)[None, :, None]
    xx = ((np.arange(s, dtype=np.float32) + 0.5) / s)[None, None, :]
    for b0 in range(0, n, BATCH):
        b1 = min(n, b0 + BATCH)
        sl = slice(b0, b1)
        m = b1 - b0
        brng = _rng(seed, stream, "batch", b0)

        def col(a: F64, m: int = m) -> F32:
            return a.astype(np.float32).reshape((m, 1, 1))

        hz = col(params["horizon"][sl])
        fr = col(params["freq"][sl])
        ph = params["phase"][sl].astype(np.float32)
        ang = col(angle[sl])
        ca, sa = np.cos(ang), np.sin(ang)
        u = xx * ca + yy * sa  # rotated coordinates (regional texture orientation)
        v = -xx * sa + yy * ca
        sh = shown[sl]
        # --- ground texture t in [0, 1] and ground-top profile, per shown class
        t = np.zeros((m, s, s), np.float32)
        bump = np.zeros((m, 1, s), np.float32)
        for k in range(7):
            idx = np.flatnonzero(sh == k)
            if idx.size == 0:
                continue
            f, p = fr[idx], ph[idx]
            uu, vv = u[idx], v[idx]
            if k == 0:  # crop rows
                tk = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * 7 * f * uu + p[:, 0, None, None]))
                tk = np.broadcast_to(tk, (idx.size, s, s))
            elif k == 1:  # canopy blobs, rounded crowns above the horizon
                tk = 0.5 + 0.25 * (
                    np.sin(2 * np.pi * 9 * f * uu + p[:, 0, None, None])
                    * np.sin(2 * np.pi * 9 * f * vv + p[:, 1, None, None])
                    + np.sin(2 * np.pi * 4 * f * (uu + vv) + p[:, 2, None, None])
                )
                bump[idx] = 0.10 * np.abs(np.sin(2 * np.pi * 5 * f * xx + p[:, 3, None, None]))
            elif k == 2:  # conifers: saw-tooth tree line, vertical streaks
                tk = 0.5 + 0.5 * np.sin(2 * np.pi * 14 * f * xx + p[:, 0, None, None]) * np.ones_like(yy)
                saw = (10 * f * xx + p[:, 3, None, None] / (2 * np.pi)) % 1.0
                bump[idx] = 0.20 * (1.0 - np.abs(2 * saw - 1.0))
            elif k == 3:  # smooth grass with faint waves
                tk = 0.5 + 0.2 * np.sin(2 * np.pi * 2 * f * vv + p[:, 0, None, None])
            elif k == 4:  # flooded: water bands among vegetation
                tk = (
                    np.sin(2 * np.pi * 5 * f * yy + 3 * np.sin(2 * np.pi * 2 * xx + p[:, 0, None, None]))
                    > 0.3
                )
                tk = tk.astype(np.float32) * np.ones_like(xx)
                bump[idx] = 0.05 * np.abs(np.sin(2 * np.pi * 6 * f * xx + p[:, 3, None, None]))
            elif k == 5:  # urban: paving grid
                g = np.sin(2 * np.pi * 10 * f * uu + p[:, 0, None, None]) * np.sin(
                    2 * np.pi * 10 * f * vv + p[:, 1, None, None]
                )
                tk = (g > 0).astype(np.float32)
            else:  # bare: dune ripples
                tk = 0.5 + 0.5 * np.sin(2 * np.pi * 6 * f * vv + 1.5 * np.sin(2 * np.pi * 3 * uu))
            t[idx] = tk
        # --- palettes
        ca_, cb_ = np.zeros((m, 3), np.float32), np.zeros((m, 3), np.float32)
        for k, (pa, pb) in _PALETTE.items():
            sel = sh == k
            ca_[sel], cb_[sel] = pa, pb
        tp = shown_top[sl]
        for codes, (pa, pb) in (
            ((210,), _WATER),
            ((220,), _SNOW),
            ((20,), ((0.3, 0.62, 0.2), (0.5, 0.7, 0.25))),
        ):
            sel = np.isin(tp, codes)
            ca_[sel], cb_[sel] = pa, pb
        sparse = np.isin(tp, (150, 151, 152, 153, 140))
        ca_[sparse] = 0.5 * ca_[sparse] + 0.5 * np.asarray(_PALETTE[6][0], np.float32)
        tint_b = tint[sl].astype(np.float32) + params["mix"][sl].astype(np.float32) * 0.3
        ca_ = np.clip(ca_ + tint_b, 0, 1)
        cb_ = np.clip(cb_ + tint_b, 0, 1)
        tt = t[..., None]
        ground = ca_[:, None, None, :] * (1 - tt) + cb_[:, None, None, :] * tt
        # distance haze: ground fades toward the horizon
        depth = np.clip((yy - hz) / (1 - hz + 1e-3), 0, 1)[..., None]
        sky_c = np.clip(params["sky"][sl].astype(np.float32) + tint_b * 0.5, 0, 1)
        ground = ground * (0.75 + 0.25 * depth) + sky_c[:, None, None, :] * 0.25 * (1 - depth)
        # --- sky with clouds
        cloud = (
            np.sin(2 * np.pi * 1.3 * xx + ph[:, 2, None, None])
            * np.sin(2 * np.pi * 1.7 * yy + ph[:, 3, None, None])
            + 0.5 * np.sin(2 * np.pi * 3.1 * (xx + 0.6 * yy) + ph[:, 0, None, None])
        ) * col(params["cloud"][sl])
        sky = sky_c[:, None, None, :] * (0.85 + 0.15 * yy[..., None]) + 0.35 * np.clip(cloud, 0, 1)[..., None]
        is_ground = (yy >= hz - bump)[..., None]
        img = np.where(is_ground, ground, sky)
        # --- buildings (population): rectangles standing on the horizon, windows when tall
        nb = n_build[sl]
        mh = params["max_h"][sl]
        for j in range(int(nb.max()) if m else 0):
            act = nb > j
            if not act.any():
                continue
            idx = np.flatnonzero(act)
            x0 = brng.uniform(0.0, 0.9, idx.size).astype(np.float32)
            bw = brng.uniform(0.06, 0.2, idx.size).astype(np.float32)
            bh = (mh[idx] * brng.uniform(0.4, 1.0, idx.size)).astype(np.float32)
            base = hz[idx, 0, 0] + brng.uniform(0.0, 0.12, idx.size).astype(np.float32)
            shade = brng.uniform(0.35, 0.8, idx.size).astype(np.float32)
            warm = brng.uniform(-0.06, 0.08, idx.size).astype(np.float32)
            r3 = lambda a: a[:, None, None]  # noqa: E731
            inside = (xx >= r3(x0)) & (xx < r3(x0 + bw)) & (yy >= r3(base - bh)) & (yy < r3(base))
            win = (np.sin(2 * np.pi * 40 * xx) > 0.3) & (np.sin(2 * np.pi * 40 * yy) > 0.3) & r3(bh > 0.2)
            colr = np.stack([shade + warm, shade, shade - warm], axis=1)[:, None, None, :]
            bimg = np.where(win[..., None], colr * 0.55 + 0.25, colr)
            img[idx] = np.where(inside[..., None], bimg, img[idx])
        # --- farmsteads: small houses with pitched red-brown roofs on the ground below the horizon
        nh = n_huts[sl]
        for j in range(int(nh.max()) if m else 0):
            idx = np.flatnonzero(nh > j)
            if idx.size == 0:
                continue
            r3 = lambda a: a[:, None, None]  # noqa: E731
            x0 = brng.uniform(0.0, 0.9, idx.size).astype(np.float32)
            below = brng.uniform(0.06, 0.35, idx.size).astype(np.float32)
            base = hz[idx, 0, 0] + below
            hw = brng.uniform(0.05, 0.08, idx.size).astype(np.float32) * (0.7 + 2.0 * below)  # nearer: larger
            wall_h = 0.6 * hw
            roof_h = 0.5 * hw
            dx = np.abs(xx - r3(x0 + hw / 2))
            wall = (dx < r3(hw / 2)) & (yy < r3(base)) & (yy >= r3(base - wall_h))
            # triangle roof: narrower towards its ridge
            top = r3(base - wall_h)
            roof = (yy < top) & (yy >= top - r3(roof_h) * (1.0 - dx / r3(hw / 2 + np.float32(1e-6))))
            roof &= dx < r3(hw / 2 + 0.01)
            tone = brng.uniform(0.8, 1.1, idx.size)[:, None]
            wc = (_HOUSE_WALL * tone).astype(np.float32)[:, None, None, :]
            rc_ = (_HOUSE_ROOF * tone).astype(np.float32)[:, None, None, :]
            sub = img[idx]
            sub = np.where(wall[..., None], wc, sub)
            img[idx] = np.where(roof[..., None], rc_, sub)
        # --- road (street-view camera)
        if cam.road:
            half = 0.02 + 0.28 * np.clip((yy - hz) / (1 - hz + 1e-3), 0, 1)
            road = (np.abs(xx - 0.5) < half) & (yy > hz)
            dash = (np.abs(xx - 0.5) < 0.012 + 0.02 * (yy - hz)) & (
                np.sin(2 * np.pi * 12 * yy / (yy - hz + 0.1)) > 0
            )
            rc = np.where(dash[..., None], np.float32(0.85), np.float32(0.28))
            img = np.where(road[..., None], rc * np.ones(3, np.float32), img)
        # --- camera, exposure, noise
        img = img * np.asarray(cam.balance, np.float32) * col(params["gain"][sl])[..., None]
        img = img + brng.normal(0.0, 0.045, img.shape).astype(np.float32)
        for _ in range(cam.blur):
            img = _box_blur(img.astype(np.float32))
        out[sl] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def encode_jpeg(img: U8, quality: int = 90) -> bytes:
    """JPEG bytes of one ``S x S x 3`` uint8 image (baseline, no metadata: deterministic bytes)."""
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# writers and readers of the image sets
# --------------------------------------------------------------------------------------------------
def write_shards(folder: str | Path, records: Iterable[tuple[str, bytes]], n_shards: int) -> None:
    """Write ``(id, jpeg)`` records round-robin into ``shard-NNN.msgpack`` files (MP-16's layout), streaming.

    Each shard is a stream of msgpack maps ``{"id": str, "image": bytes}``, one after another; record ``i``
    goes to shard ``i mod n_shards``.
    """
    packer = msgpack.Packer(use_bin_type=True)
    with atomic_path(folder, is_dir=True) as tmp, contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(tmp / f"shard-{k:03d}.msgpack", "wb")) for k in range(n_shards)]
        for i, (img_id, data) in enumerate(records):
            files[i % n_shards].write(packer.pack({"id": img_id, "image": data}))


def read_shards(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """Yield ``(id, jpeg bytes)`` from one msgpack shard or from every ``*.msgpack`` in a folder (sorted).

    Raises:
        ValueError: Naming the shard, on a record that is not a map with ``id`` and ``image``.

    """
    p = Path(path)
    files = sorted(p.glob("*.msgpack")) if p.is_dir() else [p]
    for f in files:
        with open(f, "rb") as fh:
            unpacker = msgpack.Unpacker(fh, raw=False, max_buffer_size=1 << 30)
            for i, rec in enumerate(unpacker):
                if not isinstance(rec, dict) or "id" not in rec or "image" not in rec:
                    raise ValueError(f"{f}: record {i} is not a map with 'id' and 'image'")
                yield str(rec["id"]), bytes(rec["image"])


def write_metadata(path: str | Path, ids: list[str], lat: F64, lon: F64) -> None:
    """Write an ``IMG_ID,LAT,LON`` CSV (6 decimals, ~0.1 m)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(["IMG_ID", "LAT", "LON"])
        for i, a, b in zip(ids, lat, lon, strict=True):
            wr.writerow([i, f"{a:.6f}", f"{b:.6f}"])


def write_image_folder(folder: str | Path, ids: list[str], images: U8, quality: int = 90) -> None:
    """Write each image as ``folder/<id>`` (ids are file names ending in ``.jpg``)."""
    with atomic_path(folder, is_dir=True) as tmp:
        for img_id, img in zip(ids, images, strict=True):
            (tmp / img_id).write_bytes(encode_jpeg(img, quality))


def ls_bucket_of(pop: F64, sampled: F64) -> npt.NDArray[np.int64]:
    """Return population buckets 0..3 by DESIGN section 3's rule, edges from the ``sampled`` values."""
    pos = sampled[sampled > 0]
    if pos.size == 0:
        return np.zeros(len(pop), np.int64)
    edges = np.linspace(np.log10(pos.min()), np.log10(pos.max()), 5)
    with np.errstate(divide="ignore"):
        lv = np.where(pop > 0, np.log10(np.maximum(pop, 1e-300)), -np.inf)
    return np.clip(np.searchsorted(edges[1:-1], lv, side="right"), 0, 3).astype(np.int64)


def write_contact_sheet(
    path: str | Path,
    images: U8,
    lc_class: npt.NDArray[np.int64],
    ls_bucket: npt.NDArray[np.int64],
    title: str,
    per_row: int = 12,
) -> None:
    """Write a PNG of sample images: one row per LC class, then one per population bucket, labelled."""
    s = images.shape[1]
    scale = max(1, 64 // s)
    cell = s * scale + 2
    label_w, head = 190, 24
    rows: list[tuple[str, npt.NDArray[np.int64]]] = []
    for k, name in enumerate(LC_CLASSES):
        idx = np.flatnonzero(lc_class == k)
        rows.append((f"LC {k} {name} (n={idx.size})", idx[:per_row]))
    for k, name in enumerate(LS_BUCKETS):
        idx = np.flatnonzero(ls_bucket == k)
        rows.append((f"LS {k} {name} (n={idx.size})", idx[:per_row]))
    sheet = Image.new("RGB", (label_w + per_row * cell, head + len(rows) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text((4, 4), f"{title} - {DEMO_LABEL}", fill="black", font=font)
    for r, (label, idx) in enumerate(rows):
        y = head + r * cell
        draw.text((4, y + cell // 2 - 6), label, fill="black", font=font)
        for c, i in enumerate(idx):
            tile = Image.fromarray(images[i], "RGB")
            if scale > 1:
                tile = tile.resize((s * scale, s * scale), Image.Resampling.NEAREST)
            sheet.paste(tile, (label_w + c * cell + 1, y + 1))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


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
        return RenderInputs(_lookup(self.lc, lat, lon).astype(np.uint8), np.where(ls < 0, 0.0, ls), lat, lon)


def _train_ids(n: int, rng: np.random.Generator) -> list[str]:
    """MP-16-like ids ``xx/yy/NNNNNNNNNN.jpg`` (unique)."""
    nums = rng.choice(9_000_000_000, size=n, replace=False) + 1_000_000_000
    return [f"{(v >> 8) & 0xFF:02x}/{v & 0xFF:02x}/{v}.jpg" for v in (int(x) for x in nums)]


def _test_ids(name: str, n: int, style: str, rng: np.random.Generator) -> list[str]:
    """Flickr-like (``<n>_<photo id>_<secret>_o.jpg``) or Street-View-like file names (unique)."""
    nums = rng.choice(9_000_000_000, size=n, replace=False) + 1_000_000_000
    secrets = rng.integers(0, 1 << 40, size=n)
    if style == "flickr":
        return [
            f"{i}_{int(v)}_{int(sc):010x}_o.jpg" for i, (v, sc) in enumerate(zip(nums, secrets, strict=True))
        ]
    return [f"{name}_{i:06d}_{int(sc):010x}.jpg" for i, sc in enumerate(secrets)]


def _dataset(world: World, name: str, n: int, style: str, camera: str) -> tuple[list[str], RenderInputs, U8]:
    spec = world.spec
    rng = _rng(spec.seed, "geotags", name)
    lat, lon = sample_geotags(world.ls, n, style, rng)
    attrs = world.attributes(lat, lon)
    ids = _train_ids(n, rng) if name == "__train__" else _test_ids(name, n, style, rng)
    images = render_images(attrs, spec.image_size, camera, spec.seed, world.fields, stream=f"render/{name}")
    return ids, attrs, images


def _sheet(path: Path, attrs: RenderInputs, images: U8, title: str) -> None:
    lc_class = TO_CLASS[attrs.lc_code].astype(np.int64)
    write_contact_sheet(path, images, lc_class, ls_bucket_of(attrs.pop, attrs.pop), title)


def generate_world(
    cfg: Mapping[str, Any], out: Mapping[str, str | Path], progress: Callable[[str], None] | None = None
) -> dict[str, float]:
    """Generate every demo input of ``cfg`` into the paths of ``out`` (see :func:`output_paths`).

    Args:
        cfg: A validated config (uses ``seed``, ``grid``, ``demo``).
        out: Output paths by key, as :func:`output_paths` returns them (or the rule's named outputs).
        progress: Called with a short message after each step (the workflow script logs them).

    Returns:
        Summary numbers (land fraction, population statistics, class shares, image counts).

    Raises:
        ConfigError: On a bad ``demo`` section or a missing output key.

    """
    spec = spec_from_config(cfg)
    need = ["landscan", "landcover", "train_shards", "train_metadata", "train_contact_sheet"]
    for name in spec.testsets:
        need += [f"{name}_images", f"{name}_metadata", f"{name}_contact_sheet"]
    missing = [k for k in need if k not in out]
    if missing:
        raise ConfigError(f"demo world: output path(s) not given: {missing}")
    say = progress or (lambda msg: log.info(msg))

    world = World.build(spec)
    write_landscan(out["landscan"], world.ls)
    say(f"population raster {world.ls.shape} written to {out['landscan']}")
    if spec.lc_format == "netcdf":
        write_landcover_netcdf(out["landcover"], world.lc)
    else:
        write_landcover_geotiff(out["landcover"], world.lc)
    say(f"land cover raster {world.lc.shape} ({spec.lc_format}) written to {out['landcover']}")

    ids, attrs, images = _dataset(world, "__train__", spec.n_train, "flickr", "flickr")
    q = CAMERAS["flickr"].jpeg_quality
    write_shards(
        out["train_shards"],
        ((i, encode_jpeg(im, q)) for i, im in zip(ids, images, strict=True)),
        spec.n_shards,
    )
    write_metadata(out["train_metadata"], ids, attrs.lat, attrs.lon)
    _sheet(Path(out["train_contact_sheet"]), attrs, images, "training set")
    say(f"{spec.n_train} training images in {spec.n_shards} shards written to {out['train_shards']}")
    valid = world.ls != LANDSCAN_NODATA
    lat_c = _centres(world.ls.shape[0], -90.0, 90.0, descending=True)
    area = np.broadcast_to(np.cos(np.deg2rad(lat_c))[:, None], world.ls.shape)
    summary: dict[str, float] = {
        "land_fraction": float(area[valid].sum() / area.sum()),
        "population_total": float(world.ls[valid].astype(np.float64).sum()),
        "population_max": float(world.ls[valid].max()) if valid.any() else 0.0,
        "land_share_zero_population": float((world.ls[valid] == 0).mean()) if valid.any() else 0.0,
        "train_share_urban": float((TO_CLASS[attrs.lc_code] == 5).mean()),
    }
    for name, (n, style) in sorted(spec.testsets.items()):
        t_ids, t_attrs, t_images = _dataset(world, name, n, style, style)
        write_image_folder(out[f"{name}_images"], t_ids, t_images, CAMERAS[style].jpeg_quality)
        write_metadata(out[f"{name}_metadata"], t_ids, t_attrs.lat, t_attrs.lon)
        _sheet(Path(out[f"{name}_contact_sheet"]), t_attrs, t_images, f"test set {name} ({style})")
        summary[f"{name}_share_urban"] = float((TO_CLASS[t_attrs.lc_code] == 5).mean())
        summary[f"{name}_median_population"] = float(np.median(t_attrs.pop))
        say(f"test set {name}: {n} {style} images written to {out[f'{name}_images']}")
    return summary


def write_sample_dataset(
    folder: str | Path, n: int, seed: int = 0, image_size: int = 32, style: str = "flickr"
) -> list[dict[str, Any]]:
    """Write a small test-set-like image folder for other stages' tests, from a tiny (18 x 36) demo world.

    Writes ``folder/images/<IMG_ID>`` and ``folder/metadata.csv``.

    Returns:
        One dict per image: ``IMG_ID``, ``LAT``, ``LON``, ``lc_code`` (LCCS at the point) and
        ``population``.

    """
    cfg = {
        "seed": seed,
        "grid": {"height": 18, "width": 36},
        "demo": {"ls_factor": 2, "lc_factor": 4, "image_size": image_size},
    }
    world = World.build(spec_from_config(cfg))
    root = Path(folder)
    ids, attrs, images = _dataset(world, "sample", n, style, style)
    write_image_folder(root / "images", ids, images, CAMERAS[style].jpeg_quality)
    write_metadata(root / "metadata.csv", ids, attrs.lat, attrs.lon)
    return [
        {"IMG_ID": i, "LAT": float(a), "LON": float(b), "lc_code": int(c), "population": float(p)}
        for i, a, b, c, p in zip(ids, attrs.lat, attrs.lon, attrs.lc_code, attrs.pop, strict=True)
    ]
