"""A full-size rehearsal of the real-data path: real layouts, real sizes, the README's command as printed.

``python -m geoens.demo.rehearsal OUT [--scale K] [--run]`` (or ``make rehearsal``) writes into ``OUT``:

* ``data/...`` at exactly the ``FILL-IN`` paths of ``config/paper.yaml``:

  - a LandScan-Global-2021-shaped population raster: int32 GeoTIFF, 21600 x 43200, striped, LZW, nodata
    -2147483647, EPSG:4326;
  - an ESA-CCI-LC-2015-shaped land cover NetCDF-4, 64800 x 129600, in both encodings real copies come in:
    ``lccs_class`` NC_BYTE with ``_Unsigned="true"`` (the configured file, as ESA ships it) and NC_UBYTE
    (beside it, ``*-ubyte.nc``);
  - MP-16-shaped training data: a metadata CSV with a few million geotags and msgpack shards of
    ``{"id", "image"}`` records. The geotags are photos of a few thousand *places* (many photos per place,
    as on Flickr), so the shards hold a few thousand distinct JPEGs; 5% of the ids have no image (dead
    links, as in the real MP-16, where about 10% are);
  - GeoEstimation's three partition CSVs and the Im2GPS3k metadata, copied from the peers' reference data
    (``../shared/reference/peers``; a clear error when absent), with an image rendered at each Im2GPS3k
    location, and a Street-View-like test set;

* ``my.yaml``: ``config/paper.yaml`` with only the FILL-IN paths (unchanged: the data sit at them) and the
  training budget changed (:data:`BUDGET`: CPU, a small backbone trained from scratch on few images, the
  GeoCLIP tower trained here as no CLIP weights can be downloaded);
* links to the workflow (Snakefile, rules, scripts, envs, profiles, docs, config), so that ``OUT`` is a
  working directory where the README's command runs exactly as printed: :data:`PAPER_COMMAND`.

Everything is drawn from the demo world (:mod:`geoens.demo.world`) built at a 270 x 540 grid and upsampled
to the real shapes (population divided over the finer cells with seeded dithering), so images, geotags and
both rasters agree. ``--scale K`` divides the raster sides and the grid by ``K`` (and the geotag count), for
CI. With ``--run`` the command is run and each rule's wall time and peak memory (Snakemake's ``benchmark:``
files) are collected into ``OUT/rehearsal.json`` and printed as a Markdown table, with the check that both
NetCDF encodings give the same ``lc.tif`` byte for byte.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import rasterio
import yaml
from rasterio.windows import Window

from geoens.core.config import deep_update, read_config_file
from geoens.core.constants import LANDSCAN_NODATA, PAPER_GRID_HEIGHT
from geoens.core.grid import Grid
from geoens.core.io import atomic_path
from geoens.data.shards import write_shards
from geoens.demo.generate import train_ids
from geoens.demo.images import BATCH, CAMERAS, render_images
from geoens.demo.spec import spec_from_config
from geoens.demo.world import World, sample_geotags
from geoens.demo.writers import encode_jpeg, write_lccs_netcdf, write_metadata
from geoens.geo.masks import make_lc_mask

log = logging.getLogger("geoens.demo.rehearsal")

#: The real-data command as README.md prints it (a test checks that README contains it verbatim).
PAPER_COMMAND: Final[str] = "snakemake --cores 32 results/figures/rva.pdf --configfile my.yaml"
#: Real LandScan Global and ESA CCI LC shapes (the paper's grid: PAPER_GRID_HEIGHT).
LANDSCAN_SHAPE: Final[tuple[int, int]] = (21600, 43200)
LANDCOVER_SHAPE: Final[tuple[int, int]] = (64800, 129600)
#: The demo world the rehearsal upsamples: grid 270 (population x4, land cover x12 = 1/20 of real).
WORLD_GRID_HEIGHT: Final[int] = 270
#: Allowed ``--scale`` values (divisors of 20).
SCALES: Final[tuple[int, ...]] = (1, 2, 4, 5, 10, 20)
#: Share of training ids whose image is missing from the shards (dead links).
DEAD_LINK_SHARE: Final[float] = 0.05
#: Workflow parts linked into the rehearsal folder so that it is a working directory for Snakemake.
WORKFLOW_PARTS: Final[tuple[str, ...]] = (
    "Snakefile",
    "rules",
    "workflow_scripts",
    "envs",
    "profiles",
    "docs",
    "config",
)
_TRAINER: Final[dict[str, Any]] = {
    "backbone": "lcnet_050",
    "pretrained": False,
    "image_size": 64,
    "epochs": 2,
    "batch_size": 64,
    "lr": 0.003,
    "gpus": 0,
    "max_train_images": 3000,
}
#: What ``my.yaml`` changes in ``config/paper.yaml`` besides nothing: the training budget (and the device
#: it runs on). Every other key, the FILL-IN paths included, is the paper config's own.
BUDGET: Final[dict[str, Any]] = {
    "train": {
        "device": "cpu",
        "num_workers": 2,
        "models": {"ls": dict(_TRAINER), "lc": dict(_TRAINER), "geoest": dict(_TRAINER)},
    },
    "geoclip": {"image_tower": "trained", "tower": dict(_TRAINER)},
}


@dataclass(frozen=True)
class RehearsalSpec:
    """Sizes of one rehearsal.

    Attributes:
        scale: Raster sides and grid divided by this (1 = the real sizes).
        n_geotags: Rows of the training metadata.
        n_places: Distinct training images (places photographed).
        n_streetview: Images of the Street-View-like test set.
        image_size: Side of the rendered images (pixels).
        n_shards: msgpack shards of the training set.
        seed: Seed of everything.
    """

    scale: int = 1
    n_geotags: int = 2_000_000
    n_places: int = 4000
    n_streetview: int = 5000
    image_size: int = 64
    n_shards: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"--scale {self.scale}: choose one of {SCALES} (the rasters must stay whole)")
        if self.n_places > self.n_geotags:
            raise ValueError("--places cannot exceed --geotags")

    @property
    def upsample(self) -> int:
        """Native pixels per demo-world pixel."""
        return 20 // self.scale

    @property
    def grid_height(self) -> int:
        """The common grid's rows (the paper's 5400 at scale 1)."""
        return PAPER_GRID_HEIGHT // self.scale


@dataclass
class RehearsalSummary:
    """What a rehearsal wrote (and, with ``--run``, measured)."""

    out: str
    spec: dict[str, Any]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds_to_write: float = 0.0
    run: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# rasters
# --------------------------------------------------------------------------------------------------
def _upsampled_rows(src: npt.NDArray[Any], u: int, r0: int, n: int) -> npt.NDArray[Any]:
    """Rows ``r0 .. r0+n-1`` of ``src`` repeated ``u`` times along both axes."""
    block = src[r0 // u : (r0 + n - 1) // u + 1]
    big = np.repeat(np.repeat(block, u, axis=0), u, axis=1)
    return big[r0 % u : r0 % u + n]


def landscan_rows(world_ls: npt.NDArray[np.int32], u: int, seed: int) -> Any:
    """``rows(r0, n)`` of the upsampled population raster.

    Each world cell's people are spread over its u x u native cells (seeded dithering keeps integers; the
    totals match in expectation); water stays nodata.
    """

    def rows(r0: int, n: int) -> npt.NDArray[np.int32]:
        big = _upsampled_rows(world_ls, u, r0, n)
        nodata = big == LANDSCAN_NODATA
        rng = np.random.default_rng([seed, r0])
        share = np.where(nodata, 0, big).astype(np.float64) / float(u * u)
        vals = np.floor(share + rng.random(big.shape)).astype(np.int32)
        vals[nodata] = LANDSCAN_NODATA
        return vals

    return rows


def write_landscan_strips(path: Path, shape: tuple[int, int], rows: Any, strip: int = 540) -> None:
    """A LandScan-Global-shaped GeoTIFF: int32, striped (not tiled), LZW, nodata -2147483647, EPSG:4326."""
    h, w = shape
    profile = {
        "driver": "GTiff",
        "height": h,
        "width": w,
        "count": 1,
        "dtype": "int32",
        "crs": "EPSG:4326",
        "transform": Grid(h, w).transform,
        "nodata": LANDSCAN_NODATA,
        "compress": "lzw",
        "tiled": False,
        "BIGTIFF": "IF_SAFER",
    }
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for r0 in range(0, h, strip):
            n = min(strip, h - r0)
            dst.write(rows(r0, n), 1, window=Window(0, r0, w, n))


# --------------------------------------------------------------------------------------------------
# image sets
# --------------------------------------------------------------------------------------------------
def _render(world: World, lat: npt.NDArray[np.float64], lon: npt.NDArray[np.float64],
            size: int, style: str, stream: str) -> list[bytes]:  # fmt: skip
    attrs = world.attributes(lat, lon)
    images = render_images(attrs, size, style, world.spec.seed, world.fields, stream=stream)
    quality = CAMERAS[style].jpeg_quality
    return [encode_jpeg(im, quality) for im in images]


def write_training_set(world: World, spec: RehearsalSpec, shards: Path, metadata: Path) -> dict[str, int]:
    """MP-16-shaped training data: ``n_geotags`` rows photographing ``n_places`` places.

    Each geotag is a place plus up to ~1 km of jitter, its image the place's JPEG; :data:`DEAD_LINK_SHARE`
    of the ids get no record in the shards.
    """
    rng = np.random.default_rng([spec.seed, 101])
    p_lat, p_lon = sample_geotags(world.ls, spec.n_places, "flickr", rng)
    jpegs = _render(world, p_lat, p_lon, spec.image_size, "flickr", "rehearsal/places")
    place = np.concatenate(
        [np.arange(spec.n_places), rng.integers(0, spec.n_places, spec.n_geotags - spec.n_places)]
    )
    rng.shuffle(place)
    jitter = 0.009  # degrees of latitude (~1 km)
    lat = np.clip(p_lat[place] + rng.uniform(-jitter, jitter, place.size), -89.999, 89.999)
    coslat = np.maximum(np.cos(np.deg2rad(lat)), 0.05)
    lon = (p_lon[place] + rng.uniform(-jitter, jitter, place.size) / coslat + 180.0) % 360.0 - 180.0
    ids = train_ids(spec.n_geotags, rng)
    dead = rng.random(spec.n_geotags) < DEAD_LINK_SHARE
    write_shards(
        shards,
        ((ids[i], jpegs[place[i]]) for i in range(spec.n_geotags) if not dead[i]),
        spec.n_shards,
    )
    write_metadata(metadata, ids, lat, lon)
    return {"geotags": spec.n_geotags, "places": spec.n_places, "records": int((~dead).sum())}


def write_rendered_folder(world: World, lat: npt.NDArray[np.float64], lon: npt.NDArray[np.float64],
                       ids: Sequence[str], size: int, style: str, folder: Path) -> None:  # fmt: skip
    """Images rendered at the given points, one file per id."""
    with atomic_path(folder, is_dir=True) as tmp:
        for k0 in range(0, len(ids), BATCH * 8):
            sl = slice(k0, k0 + BATCH * 8)
            for img_id, data in zip(
                ids[sl], _render(world, lat[sl], lon[sl], size, style, f"rehearsal/{style}/{k0}"), strict=True
            ):
                (tmp / img_id).write_bytes(data)


def read_latlon_csv(path: Path) -> tuple[list[str], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``IMG_ID, LAT, LON`` of a metadata CSV (extra columns ignored)."""
    ids, lat, lon = [], [], []
    with open(path, encoding="utf-8-sig", newline="") as fh:
        for row in csv.DictReader(fh):
            ids.append(row["IMG_ID"])
            lat.append(float(row["LAT"]))
            lon.append(float(row["LON"]))
    return ids, np.asarray(lat), np.asarray(lon)


# --------------------------------------------------------------------------------------------------
# the rehearsal folder
# --------------------------------------------------------------------------------------------------
def default_peers(workflow: Path) -> Path:
    """Where the peers' reference data sit beside a checkout: ``<checkout>/../shared/reference/peers``."""
    return workflow.resolve().parent / "shared" / "reference" / "peers"


def peer_files(peers: Path) -> dict[str, Path]:
    """The peer files the rehearsal copies.

    Raises:
        FileNotFoundError: Naming every missing file and the ``--peers`` option.
    """
    files = {
        "coarse": peers / "GeoEstimation" / "geo-cells" / "cells_50_5000.csv",
        "middle": peers / "GeoEstimation" / "geo-cells" / "cells_50_2000.csv",
        "fine": peers / "GeoEstimation" / "geo-cells" / "cells_50_1000.csv",
        "im2gps3k": peers / "GeoEstimation" / "meta" / "im2gps3k_places365.csv",
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            "the rehearsal needs GeoEstimation's partitions and the Im2GPS3k metadata from the peers' "
            f"reference data, not found: {', '.join(missing)} (give their folder with --peers)"
        )
    return files


def rehearsal_config(paper: Mapping[str, Any], spec: RehearsalSpec) -> dict[str, Any]:
    """``config/paper.yaml`` with the training budget of :data:`BUDGET` (and the grid at ``--scale``)."""
    cfg: dict[str, Any] = json.loads(json.dumps(paper))
    deep_update(cfg, BUDGET)
    if spec.scale != 1:
        cfg["grid"]["height"], cfg["grid"]["width"] = spec.grid_height, 2 * spec.grid_height
    return cfg


def link_workflow(workflow: Path, out: Path) -> None:
    """Symlink the workflow's parts into ``out`` (replacing earlier links)."""
    for part in WORKFLOW_PARTS:
        src, dst = workflow / part, out / part
        if not src.exists():
            raise FileNotFoundError(f"{src}: not a geoens workflow folder (give it with --workflow)")
        if dst.is_symlink():
            dst.unlink()
        elif dst.exists():
            raise FileExistsError(f"{dst} exists and is not a link: choose an empty OUT folder")
        dst.symlink_to(src.resolve(), target_is_directory=src.is_dir())


def write_rehearsal(out: Path, spec: RehearsalSpec, workflow: Path, peers: Path) -> RehearsalSummary:
    """Write the rehearsal's inputs, ``my.yaml`` and the workflow links into ``out``; return a summary."""
    start = time.perf_counter()
    peer = peer_files(peers)
    paper = read_config_file(workflow / "config" / "paper.yaml")
    inp = paper["inputs"]
    out.mkdir(parents=True, exist_ok=True)
    link_workflow(workflow, out)
    world = World.build(
        spec_from_config(
            {
                "seed": spec.seed,
                "grid": {"height": WORLD_GRID_HEIGHT, "width": 2 * WORLD_GRID_HEIGHT},
                "demo": {"ls_factor": 4, "lc_factor": 12, "image_size": spec.image_size},
            }
        )
    )
    u = spec.upsample
    summary = RehearsalSummary(out=str(out), spec=spec.__dict__.copy())
    ls_shape = (LANDSCAN_SHAPE[0] // spec.scale, LANDSCAN_SHAPE[1] // spec.scale)
    lc_shape = (LANDCOVER_SHAPE[0] // spec.scale, LANDCOVER_SHAPE[1] // spec.scale)

    def step(name: str, path: Path, fn: Any) -> None:
        t0 = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        info = fn() or {}
        size = (
            sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            if path.is_dir()
            else path.stat().st_size
        )
        summary.files[name] = {"path": str(path.relative_to(out)), "bytes": size,
                               "seconds": round(time.perf_counter() - t0, 1), **info}  # fmt: skip
        log.info("%s: %s (%.2f GB) in %.1f s", name, path, size / 1e9, time.perf_counter() - t0)

    ls_path = out / inp["landscan"]
    step(
        "landscan",
        ls_path,
        lambda: write_landscan_strips(ls_path, ls_shape, landscan_rows(world.ls, u, spec.seed)),
    )
    lc_path = out / inp["landcover"]
    lc_ubyte = lc_path.with_name(lc_path.stem + "-ubyte.nc")
    for name, path, enc in (("landcover", lc_path, "byte"), ("landcover_ubyte", lc_ubyte, "ubyte")):
        step(name, path, lambda path=path, enc=enc: write_lccs_netcdf(
            path, lc_shape, lambda r0, n: _upsampled_rows(world.lc, u, r0, n), encoding=enc, complevel=1,
            title="ESA CCI Land Cover Map (geoens rehearsal, synthetic)"))  # fmt: skip
    tr = inp["train"]
    step("train_shards", out / tr["shards_dir"],
         lambda: write_training_set(world, spec, out / tr["shards_dir"], out / tr["metadata"]))  # fmt: skip
    for level in ("coarse", "middle", "fine"):
        dst = out / paper["partitions"]["csv"][level]
        step(f"partition_{level}", dst, lambda dst=dst, level=level: _copy(peer[level], dst))
    im = inp["testsets"]["im2gps3k"]
    ids, lat, lon = read_latlon_csv(peer["im2gps3k"])
    step("im2gps3k_metadata", out / im["metadata"], lambda: _copy(peer["im2gps3k"], out / im["metadata"]))
    size = spec.image_size
    step("im2gps3k_images", out / im["images"],
         lambda: write_rendered_folder(world, lat, lon, ids, size, "flickr", out / im["images"]))  # fmt: skip
    sv = inp["testsets"]["streetview"]
    rng = np.random.default_rng([spec.seed, 202])
    s_lat, s_lon = sample_geotags(world.ls, spec.n_streetview, "streetview", rng)
    s_ids = [f"sv_{k:07d}.jpg" for k in range(spec.n_streetview)]
    sv_dir = out / sv["images"]
    step("streetview_images", sv_dir,
         lambda: write_rendered_folder(world, s_lat, s_lon, s_ids, size, "streetview", sv_dir))  # fmt: skip
    step("streetview_metadata", out / sv["metadata"],
         lambda: write_metadata(out / sv["metadata"], s_ids, s_lat, s_lon))  # fmt: skip
    cfg = rehearsal_config(paper, spec)
    header = (
        "# geoens rehearsal: config/paper.yaml with only the training budget changed "
        "(geoens.demo.rehearsal.BUDGET)"
        + (f" and the grid at --scale {spec.scale}" if spec.scale != 1 else "")
        + ".\n# The FILL-IN paths are the paper config's own: the rehearsal wrote its data there.\n"
    )
    (out / "my.yaml").write_text(header + yaml.safe_dump(cfg, sort_keys=False))
    summary.seconds_to_write = round(time.perf_counter() - start, 1)
    return summary


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


# --------------------------------------------------------------------------------------------------
# running the README's command and collecting what it cost
# --------------------------------------------------------------------------------------------------
def run_command(out: Path, command: str = PAPER_COMMAND, extra: Sequence[str] = ()) -> int:
    """Run ``command`` (split like a shell) in ``out`` with this Python's scripts first on ``PATH``."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("HF_HUB_OFFLINE", "1")
    args = [*shlex.split(command), *extra]
    log.info("running in %s: %s", out, " ".join(args))
    return subprocess.run(args, cwd=out, env=env, check=False).returncode


def rule_costs(out: Path) -> list[dict[str, Any]]:
    """Wall time and peak memory of every job, from ``benchmarks/<stage>/<job>.tsv``."""
    rows = []
    for tsv in sorted((out / "benchmarks").rglob("*.tsv")):
        with open(tsv, encoding="utf-8") as fh:
            rec = next(csv.DictReader(fh, delimiter="\t"))
        rows.append(
            {
                "job": str(tsv.relative_to(out / "benchmarks").with_suffix("")),
                "seconds": float(rec["s"]),
                "max_rss_mb": float(rec["max_rss"]) if rec.get("max_rss") not in (None, "", "-") else None,
            }
        )
    return rows


def compare_encodings(out: Path, grid: Grid) -> dict[str, Any]:
    """Build the LC mask from the NC_UBYTE copy; compare it with the workflow's ``lc.tif`` byte for byte."""
    paper = read_config_file(out / "my.yaml")
    lc_path = out / paper["inputs"]["landcover"]
    other = out / "results" / "rehearsal" / "lc_ubyte.tif"
    other.parent.mkdir(parents=True, exist_ok=True)
    make_lc_mask(lc_path.with_name(lc_path.stem + "-ubyte.nc"), grid, other)
    a, b = out / "results" / "masks" / "lc.tif", other
    ha, hb = (hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b))
    return {"lc_tif_sha256": ha, "lc_ubyte_tif_sha256": hb, "identical": ha == hb}


def costs_markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The per-job costs as a Markdown table."""
    lines = ["| job | wall (s) | peak memory (GB) |", "|---|---|---|"]
    for r in rows:
        mem = "-" if r["max_rss_mb"] is None else f"{r['max_rss_mb'] / 1024:.2f}"
        lines.append(f"| {r['job']} | {r['seconds']:.1f} | {mem} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m geoens.demo.rehearsal``."""
    p = argparse.ArgumentParser(prog="python -m geoens.demo.rehearsal", description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="rehearsal folder (created; becomes a Snakemake working directory)")
    p.add_argument(
        "--scale", type=int, default=1, choices=SCALES, help="divide raster sides and grid by this"
    )
    p.add_argument(
        "--geotags", type=int, default=None, help="training metadata rows (default 2,000,000 / scale)"
    )
    p.add_argument("--places", type=int, default=None, help="distinct training images (default 4000 / scale)")
    p.add_argument(
        "--streetview", type=int, default=None, help="Street-View-like images (default 5000 / scale)"
    )
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workflow", type=Path, default=Path.cwd(), help="the geoens checkout (default: here)")
    p.add_argument("--peers", type=Path, default=None, help="peers' reference data (default ../shared/...)")
    p.add_argument("--run", action="store_true", help=f"then run `{PAPER_COMMAND}` there and collect costs")
    p.add_argument("--skip-write", action="store_true", help="reuse the data already in OUT")
    return p


def spec_from_args(args: argparse.Namespace) -> RehearsalSpec:
    """The :class:`RehearsalSpec` of the command line's sizes."""
    k = args.scale
    return RehearsalSpec(
        scale=k,
        n_geotags=args.geotags or 2_000_000 // k,
        n_places=args.places or max(200, 4000 // k),
        n_streetview=args.streetview or max(100, 5000 // k),
        image_size=args.image_size,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m geoens.demo.rehearsal``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    spec = spec_from_args(args)
    out: Path = args.out
    workflow: Path = args.workflow.resolve()
    report_path = out / "rehearsal.json"
    try:
        if args.skip_write:
            summary = RehearsalSummary(**json.loads(report_path.read_text()))
        else:
            summary = write_rehearsal(out, spec, workflow, args.peers or default_peers(workflow))
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"geoens.demo.rehearsal: error: {exc}", file=sys.stderr)
        return 2
    report_path.write_text(json.dumps(summary.__dict__, indent=2))
    print(f"rehearsal data and my.yaml written to {out} in {summary.seconds_to_write:.0f} s")
    if not args.run:
        print(f"run it with:  cd {out} && {PAPER_COMMAND}")
        return 0
    t0 = time.perf_counter()
    rc = run_command(out)
    summary.run = {"command": PAPER_COMMAND, "returncode": rc, "wall_s": round(time.perf_counter() - t0, 1)}
    summary.run["jobs"] = rule_costs(out)
    if rc == 0:
        summary.run["netcdf_encodings"] = compare_encodings(out, Grid(spec.grid_height, 2 * spec.grid_height))
    report_path.write_text(json.dumps(summary.__dict__, indent=2))
    print(costs_markdown_table(summary.run["jobs"]))
    print(json.dumps({k: v for k, v in summary.run.items() if k != "jobs"}, indent=2))
    return rc


if __name__ == "__main__":
    sys.exit(main())
