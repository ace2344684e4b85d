"""The demo world's settings: :class:`DemoSpec` read from a config, the output paths and the random streams.

Also the shared vocabulary of :mod:`geoens.demo`: the array type aliases, the label put on every demo file,
the test-set styles and the pixel centres every raster of the world is evaluated at.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from geoens.core.config import ConfigError, grid_from_config
from geoens.core.constants import LS_BUCKETS
from geoens.core.grid import Grid

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

#: Text put on every figure and file made from the demo world.
DEMO_LABEL: Final[str] = "synthetic demo world"
#: Styles of test sets: ``flickr`` (urban-heavy, training camera), ``streetview`` (rural, other camera).
STYLES: Final[tuple[str, ...]] = ("flickr", "streetview")
#: Geographies of the demo world (``demo.geography``).
GEOGRAPHIES: Final[tuple[str, ...]] = ("synthetic", "earth")
#: Kilometres per degree of latitude (the demo world's flat local approximations).
KM_PER_DEGREE: Final[float] = 111.195


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
        mixes: ``name -> {LS bucket: share}`` of the test sets drawn with a set population mix (generated
            by :func:`geoens.demo.generate.generate_mixed_testset`, rule ``demo_testset``).
        geography: ``synthetic`` (invented continents and cities) or ``earth`` (:mod:`geoens.demo.earth`).

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
    mixes: dict[str, dict[str, float]] = field(default_factory=dict)
    geography: str = "synthetic"

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
    mixes: dict[str, dict[str, float]] = {}
    for name, ts in dict(d.get("testsets", {})).items():
        style = ts.get("style")
        if style not in STYLES:
            raise ConfigError(f"config key 'demo.testsets.{name}.style': {style!r} is not one of {STYLES}")
        n = int(ts.get("n", 0))
        if n < 1:
            raise ConfigError(f"config key 'demo.testsets.{name}.n': must be >= 1, got {n}")
        testsets[str(name)] = (n, str(style))
        if ts.get("mix") is not None:
            mixes[str(name)] = _mix(name, ts["mix"])
    lc_format = str(d.get("lc_format", "netcdf"))
    if lc_format not in ("netcdf", "geotiff"):
        raise ConfigError(f"config key 'demo.lc_format': {lc_format!r} is not netcdf or geotiff")
    geography = str(d.get("geography", "synthetic"))
    if geography not in GEOGRAPHIES:
        raise ConfigError(f"config key 'demo.geography': {geography!r} is not one of {GEOGRAPHIES}")
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
        mixes=mixes,
        geography=geography,
    )


def _mix(name: str, mix: Mapping[str, Any]) -> dict[str, float]:
    """Validate ``demo.testsets.<name>.mix`` (LS bucket -> share, shares >= 0 summing to 1)."""
    key = f"config key 'demo.testsets.{name}.mix'"
    unknown = sorted(set(mix) - set(LS_BUCKETS))
    if unknown:
        raise ConfigError(f"{key}: unknown bucket(s) {unknown}; buckets are {list(LS_BUCKETS)}")
    out = {b: float(mix.get(b, 0.0)) for b in LS_BUCKETS}
    if any(v < 0 for v in out.values()) or abs(sum(out.values()) - 1.0) > 1e-6:
        raise ConfigError(f"{key}: shares must be >= 0 and sum to 1, got {dict(mix)}")
    return out


def output_paths(cfg: Mapping[str, Any], mixed: bool = False) -> dict[str, Path]:
    """Return the files and folders the demo world is written to, from the config's ``inputs`` section.

    Keys: ``landscan``, ``landcover``, ``train_shards`` (folder), ``train_metadata``,
    ``train_contact_sheet``, and per test set ``<name>_images`` (folder), ``<name>_metadata``,
    ``<name>_contact_sheet``. Contact sheets go beside the population raster as
    ``contact_sheet_<name>.png`` (``<name>`` of the training set is ``inputs.train.name``). The test sets
    drawn with a set mix are left out (their own rule writes them); ``mixed=True`` gives only theirs.

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
    if mixed:
        out = {}
    for name in sorted(n for n in spec.testsets if (n in spec.mixes) == mixed):
        out[f"{name}_images"] = Path(inp["testsets"][name]["images"])
        out[f"{name}_metadata"] = Path(inp["testsets"][name]["metadata"])
        out[f"{name}_contact_sheet"] = root / f"contact_sheet_{name}.png"
    return out


def stream_rng(seed: int, *stream: int | str) -> np.random.Generator:
    """Return an independent, reproducible random stream for ``(seed, *stream)``."""
    keys = [seed] + [zlib.crc32(s.encode()) if isinstance(s, str) else int(s) for s in stream]
    return np.random.default_rng(keys)


def pixel_centres(n: int, lo: float, hi: float, descending: bool = False) -> F64:
    """Centres of ``n`` equal bins between ``lo`` and ``hi``."""
    c = lo + (np.arange(n, dtype=np.float64) + 0.5) * ((hi - lo) / n)
    return c[::-1].copy() if descending else c


def pixel_km2(h: int, w: int) -> F64:
    """Area (km2) of one pixel in each row of a global ``h x w`` raster (north row first)."""
    lat = pixel_centres(h, -90.0, 90.0, descending=True)
    return np.asarray(KM_PER_DEGREE**2 * (180.0 / h) * (360.0 / w) * np.cos(np.deg2rad(lat)), np.float64)


def config_from_params(seed: int, grid_json: str, demo_json: str) -> dict[str, Any]:
    """The ``seed``, ``grid`` and ``demo`` sections the demo rules pass as params (JSON strings)."""
    return {"seed": int(seed), "grid": json.loads(grid_json), "demo": json.loads(demo_json)}
