"""The whole demo world (DESIGN section 6): every workflow input generated from one seed.

* a LandScan-like population raster and an ESA-CCI-like land cover raster (:mod:`geoens.demo.world`,
  written by :mod:`geoens.demo.writers`);
* an MP-16-like training set (msgpack shards of ``{"id", "image"}`` plus ``IMG_ID,LAT,LON`` metadata) whose
  geotags are drawn in proportion to population, as Flickr's are;
* Im2GPS3k-like (``flickr``: urban-heavy, same camera) and Street-View-like (``streetview``: rural-heavy,
  another camera) test sets as image folders plus metadata (images by :mod:`geoens.demo.images`);
* contact sheets of the rendered images grouped by land-cover class and population bucket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from geoens.core.config import ConfigError
from geoens.core.constants import LANDSCAN_NODATA, LS_BUCKETS
from geoens.data.shards import write_shards
from geoens.demo.earth import build_earth_world, sample_earth_geotags
from geoens.demo.images import CAMERAS, render_images
from geoens.demo.spec import F64, U8, DemoSpec, pixel_centres, spec_from_config, stream_rng
from geoens.demo.world import TO_CLASS, RenderInputs, World, sample_geotags
from geoens.demo.writers import (
    encode_jpeg,
    write_contact_sheet,
    write_image_folder,
    write_landcover_geotiff,
    write_landcover_netcdf,
    write_landscan,
    write_metadata,
)
from geoens.geo.buckets import N_LS_BUCKETS, bucketize

log = logging.getLogger("geoens.demo")


def _ls_bucket_of(pop: F64, sampled: F64) -> npt.NDArray[np.int64]:
    """Population buckets 0..3 for the contact sheets, edges from the ``sampled`` values (one bucket rule).

    The edges are :func:`geoens.geo.buckets.ls_bucket_edges`' (equal steps in log10 between the smallest and
    the largest positive sample) and :func:`geoens.geo.buckets.bucketize` applies them; NaN counts as bucket
    0. A degenerate sample never raises (a one-image test set gives one): no positive value puts every image
    in bucket 0, all positive values equal puts those at or above it in bucket 3.
    """
    pos = sampled[sampled > 0]
    if pos.size == 0:
        return np.zeros(len(pop), np.int64)
    if pos.max() == pos.min():
        return np.where(pop >= pos.min(), 3, 0).astype(np.int64)
    edges = np.linspace(np.log10(pos.min()), np.log10(pos.max()), N_LS_BUCKETS + 1)
    return np.maximum(bucketize(pop, edges), 0).astype(np.int64)


def train_ids(n: int, rng: np.random.Generator) -> list[str]:
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


def _build_world(spec: DemoSpec) -> World:
    """The demo world of ``demo.geography``: invented (``synthetic``) or on Earth's land and cities."""
    return build_earth_world(spec) if spec.geography == "earth" else World.build(spec)


#: A geotag sampler: ``(population raster, n, style, rng) -> (lat, lon)``.
Sampler = Callable[[npt.NDArray[np.int32], int, str, np.random.Generator], tuple[F64, F64]]


def _sampler(spec: DemoSpec) -> Sampler:
    """The geotag sampler of ``demo.geography`` (the rule the training and test photos are drawn by)."""
    return sample_earth_geotags if spec.geography == "earth" else sample_geotags


def _dataset(world: World, name: str, n: int, style: str, camera: str) -> tuple[list[str], RenderInputs, U8]:
    spec = world.spec
    rng = stream_rng(spec.seed, "geotags", name)
    lat, lon = _sampler(spec)(world.ls, n, style, rng)
    attrs = world.attributes(lat, lon)
    ids = train_ids(n, rng) if name == "__train__" else _test_ids(name, n, style, rng)
    images = render_images(attrs, spec.image_size, camera, spec.seed, world.fields, stream=f"render/{name}")
    return ids, attrs, images


def _sheet(path: Path, attrs: RenderInputs, images: U8, title: str) -> None:
    lc_class = TO_CLASS[attrs.lc_code].astype(np.int64)
    write_contact_sheet(path, images, lc_class, _ls_bucket_of(attrs.pop, attrs.pop), title)


def generate_world(
    cfg: Mapping[str, Any], out: Mapping[str, str | Path], progress: Callable[[str], None] | None = None
) -> dict[str, float]:
    """Generate every demo input of ``cfg`` into the paths of ``out``.

    Args:
        cfg: A validated config (uses ``seed``, ``grid``, ``demo``).
        out: Output paths by key, as :func:`~geoens.demo.spec.output_paths` returns them (or the rule's named
            outputs).
        progress: Called with a short message after each step (the workflow script logs them).

    Returns:
        Summary numbers (land fraction, population statistics, class shares, image counts).

    Raises:
        ConfigError: On a bad ``demo`` section or a missing output key.

    """
    spec = spec_from_config(cfg)
    need = ["landscan", "landcover", "train_shards", "train_metadata", "train_contact_sheet"]
    plain = {k: v for k, v in spec.testsets.items() if k not in spec.mixes}
    for name in plain:
        need += [f"{name}_images", f"{name}_metadata", f"{name}_contact_sheet"]
    missing = [k for k in need if k not in out]
    if missing:
        raise ConfigError(f"demo world: output path(s) not given: {missing}")
    say = progress or (lambda msg: log.info(msg))

    world = _build_world(spec)
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
    lat_c = pixel_centres(world.ls.shape[0], -90.0, 90.0, descending=True)
    area = np.broadcast_to(np.cos(np.deg2rad(lat_c))[:, None], world.ls.shape)
    summary: dict[str, float] = {
        "land_fraction": float(area[valid].sum() / area.sum()),
        "population_total": float(world.ls[valid].astype(np.float64).sum()),
        "population_max": float(world.ls[valid].max()) if valid.any() else 0.0,
        "land_share_zero_population": float((world.ls[valid] == 0).mean()) if valid.any() else 0.0,
        "train_share_urban": float((TO_CLASS[attrs.lc_code] == 5).mean()),
    }
    for name, (n, style) in sorted(plain.items()):
        t_ids, t_attrs, t_images = _dataset(world, name, n, style, style)
        summary.update(_write_testset(out, name, style, t_ids, t_attrs, t_images))
        say(f"test set {name}: {n} {style} images written to {out[f'{name}_images']}")
    return summary


def _write_testset(
    out: Mapping[str, str | Path], name: str, style: str, ids: list[str], attrs: RenderInputs, images: U8
) -> dict[str, float]:
    write_image_folder(out[f"{name}_images"], ids, images, CAMERAS[style].jpeg_quality)
    write_metadata(out[f"{name}_metadata"], ids, attrs.lat, attrs.lon)
    _sheet(Path(out[f"{name}_contact_sheet"]), attrs, images, f"test set {name} ({style})")
    return {
        f"{name}_share_urban": float((TO_CLASS[attrs.lc_code] == 5).mean()),
        f"{name}_median_population": float(np.median(attrs.pop)),
    }


def generate_mixed_testset(
    cfg: Mapping[str, Any], name: str, out: Mapping[str, str | Path]
) -> dict[str, float]:
    """Generate one test set drawn with a set population mix (``demo.testsets.<name>.mix``).

    Geotags are drawn as the set's ``style`` draws them, then kept per population bucket (the contact
    sheets' buckets, edges from the training geotags' population) in the numbers the mix asks for, so a
    bucket's photos look as they do in that style and only the mix changes (a pure label shift for
    ``flickr``). The world is rebuilt from the same seed, so it is the world of rule ``demo_world``.

    Returns:
        Summary numbers (urban share, median population, photos per bucket).

    Raises:
        ConfigError: If ``name`` has no mix, or an output path is missing.
        ValueError: If the style cannot supply a bucket's photos.

    """
    spec = spec_from_config(cfg)
    if name not in spec.mixes:
        raise ConfigError(f"config key 'demo.testsets.{name}.mix': missing (not a mixed test set)")
    missing = [k for k in (f"{name}_images", f"{name}_metadata", f"{name}_contact_sheet") if k not in out]
    if missing:
        raise ConfigError(f"demo test set {name}: output path(s) not given: {missing}")
    n, style = spec.testsets[name]
    world = _build_world(spec)
    sample = _sampler(spec)
    t_lat, t_lon = sample(world.ls, spec.n_train, "flickr", stream_rng(spec.seed, "geotags", "__train__"))
    train_pop = world.attributes(t_lat, t_lon).pop
    rng = stream_rng(spec.seed, "geotags", name)
    want = _bucket_counts(spec.mixes[name], n)
    pool = 20 * n
    for _ in range(6):
        lat, lon = sample(world.ls, pool, style, rng)
        b = _ls_bucket_of(world.attributes(lat, lon).pop, train_pop)
        if all(int((b == k).sum()) >= c for k, c in enumerate(want)):
            break
        pool *= 4
    else:
        raise ValueError(f"demo test set {name}: style {style!r} gives too few photos for the mix {want}")
    keep = rng.permutation(np.concatenate([np.flatnonzero(b == k)[:c] for k, c in enumerate(want)]))
    attrs = world.attributes(lat[keep], lon[keep])
    ids = _test_ids(name, n, style, rng)
    images = render_images(attrs, spec.image_size, style, spec.seed, world.fields, stream=f"render/{name}")
    summary = _write_testset(out, name, style, ids, attrs, images)
    summary.update({f"{name}_n_{LS_BUCKETS[k]}": float(c) for k, c in enumerate(want)})
    return summary


def _bucket_counts(mix: Mapping[str, float], n: int) -> list[int]:
    """Photos per LS bucket for ``n`` photos (largest remainders)."""
    raw = np.array([mix[b] * n for b in LS_BUCKETS])
    counts = np.floor(raw).astype(np.int64)
    counts[np.argsort(-(raw - counts), kind="stable")[: n - int(counts.sum())]] += 1
    return [int(c) for c in counts]


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
