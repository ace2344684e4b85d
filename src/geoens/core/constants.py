"""Every fixed number and class table of the project, in one place.

Sources: the paper (section 5) and ``DESIGN.md`` sections 2-4 of the project.
"""

from __future__ import annotations

import math
from typing import Final

#: Mean Earth radius (IUGG R1, km) used for pixel areas; configurable through ``grid.earth_radius_km``.
EARTH_RADIUS_KM: Final[float] = 6371.0088
#: Radius (km) of the haversine great-circle distance, GeoEstimation's convention.
GCD_RADIUS_KM: Final[float] = 6371.0
#: Rows of the paper's common grid (5400 x 10800, 1/30 degree): the rehearsal's full size, and the grid
#: ``geoens rva`` scores a partition on when no results folder gives one.
PAPER_GRID_HEIGHT: Final[int] = 5400

#: The usual GCD thresholds (km) and their names.
GCD_THRESHOLDS_KM: Final[tuple[float, ...]] = (1.0, 25.0, 200.0, 750.0, 2500.0)
GCD_THRESHOLD_NAMES: Final[tuple[str, ...]] = ("street", "city", "region", "country", "continent")


def cap_area_km2(radius_km: float, earth_radius_km: float = EARTH_RADIUS_KM) -> float:
    """Area (km^2) of a spherical cap of geodesic radius ``radius_km``: ``2 pi R^2 (1 - cos(r / R))``.

    ``R`` is the area radius (6371.0088 km, DESIGN 2), the one the pixel areas use, so that a cap and a
    region of the grid are measured alike; distances use :data:`GCD_RADIUS_KM` (6371 km).
    """
    return 2.0 * math.pi * earth_radius_km**2 * (1.0 - math.cos(radius_km / earth_radius_km))


#: RvA budgets: spherical-cap areas of the GCD thresholds (3.14, 1.96e3, 1.26e5, 1.77e6, 1.94e7 km^2).
CAP_AREAS_KM2: Final[tuple[float, ...]] = tuple(cap_area_km2(r) for r in GCD_THRESHOLDS_KM)

# --- LandScan -------------------------------------------------------------------------------------
#: LandScan's nodata value (int32) when the file does not declare one.
LANDSCAN_NODATA: Final[int] = -2147483647
#: Names of the four population-density buckets, lowest first.
LS_BUCKETS: Final[tuple[str, ...]] = ("lowest", "low", "medium", "high")
#: Indices of the buckets that make the "urban prior" (medium and high).
LS_URBAN_BUCKETS: Final[tuple[int, ...]] = (2, 3)

# --- ESA CCI land cover ---------------------------------------------------------------------------
#: LCCS nodata code.
LC_NODATA: Final[int] = 0
#: Regional subclasses folded into their top-level LCCS code.
LC_SUBCLASS_TO_TOP: Final[dict[int, int]] = {
    11: 10, 12: 10, 61: 60, 62: 60, 71: 70, 72: 70, 81: 80, 82: 80,
    121: 120, 122: 120, 151: 150, 152: 150, 153: 150, 201: 200, 202: 200,
}  # fmt: skip
#: The 22 top-level LCCS codes.
LC_TOP_CODES: Final[tuple[int, ...]] = (
    10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150, 160, 170, 180, 190, 200, 210, 220,
)  # fmt: skip
#: The 7 merged classes predicted by the LC classifier, with the top codes each holds.
LC_CLASSES: Final[tuple[str, ...]] = (
    "cropland",
    "broadleaf tree",
    "other tree",
    "short vegetation",
    "flooded vegetation",
    "urban",
    "bare, water, snow",
)
LC_MERGE: Final[dict[int, tuple[int, ...]]] = {
    0: (10, 20, 30, 40),
    1: (50, 60),
    2: (70, 80, 90, 100),
    3: (110, 120, 130, 140, 150),
    4: (160, 170, 180),
    5: (190,),
    6: (200, 210, 220),
}
#: Index of the urban LC class (capped in training, DESIGN 5.1 of the paper).
LC_URBAN: Final[int] = 5


def lc_lookup_tables() -> tuple[list[int], list[int]]:
    """Return 256-entry lookup tables: ``code -> top code`` (0 = none), ``code -> merged class`` (-1 = none).

    Unknown LCCS codes (not a top code nor a known subclass) map to 0 / -1, as nodata does.
    """
    to_top = [0] * 256
    for code in LC_TOP_CODES:
        to_top[code] = code
    for sub, top in LC_SUBCLASS_TO_TOP.items():
        to_top[sub] = top
    top_to_class = {code: cls for cls, codes in LC_MERGE.items() for code in codes}
    to_class = [top_to_class.get(to_top[c], -1) if to_top[c] else -1 for c in range(256)]
    return to_top, to_class


# --- predictor families ---------------------------------------------------------------------------
#: Families of masks. ``s2`` is the fine S2 partition shared by both base models.
FAMILIES: Final[tuple[str, ...]] = ("s2", "ls", "lc")
#: Number of classes of the attribute families.
N_CLASSES: Final[dict[str, int]] = {"ls": len(LS_BUCKETS), "lc": len(LC_CLASSES)}
#: Base geolocation models.
BASE_MODELS: Final[tuple[str, ...]] = ("geoest", "geoclip")
#: Display names used in tables and figures.
DISPLAY_NAMES: Final[dict[str, str]] = {"geoest": "GeoEst.", "geoclip": "GeoCLIP"}
#: Ensemble variants per base model: (suffix, families multiplied in besides s2, urban prior?).
METHOD_VARIANTS: Final[tuple[tuple[str, tuple[str, ...], bool], ...]] = (
    ("", (), False),
    ("+LS", ("ls",), False),
    ("+LS urban prior", ("ls",), True),
    ("+LC", ("lc",), False),
    ("+LS+LC", ("ls", "lc"), False),
)

# --- external models (bring your own geolocator, DESIGN section 11; the workflow side) ---
#: Where the workflow writes its own base models' predictions in the external-model contract
#: (rule export_predictions); a config's external predictions files under it are produced by the run.
EXPORT_DIR: Final[str] = "results/export"
#: Points of the exported GeoCLIP gallery form: its top-k fine-cell locations per image with their softmax
#: weights renormalised over the k (GeoCLIP's gallery here is the fine cells' mean locations).
EXPORT_GEOCLIP_TOP_K: Final[int] = 16

#: Label value meaning "no class" in every label raster and label column.
NO_CLASS: Final[int] = -1

# --- training on a cluster queue ------------------------------------------------------------------
#: Exit status of a training job that saved a checkpoint after SIGTERM/SIGUSR1 (sysexits' EX_TEMPFAIL):
#: non-zero, so Snakemake/SLURM retry the job, which then resumes from the checkpoint.
EXIT_RESUMABLE: Final[int] = 75
#: Signals that make a training loop checkpoint at the next step boundary and exit with EXIT_RESUMABLE.
STOP_SIGNALS: Final[tuple[str, ...]] = ("SIGTERM", "SIGUSR1")
#: Default of ``train.checkpoint_every_steps`` (optimizer steps between mid-epoch checkpoints; 0: none).
CHECKPOINT_EVERY_STEPS: Final[int] = 500
#: Default of ``train.progress_every_s`` (seconds between in-epoch progress lines in the training log).
PROGRESS_EVERY_S: Final[float] = 60.0

# --- calibrated search regions and the tempered ensemble (DESIGN section 9) -----------------------
#: Default nominal coverage levels ``1 - alpha`` of the calibrated regions.
COVERAGE_LEVELS: Final[tuple[float, ...]] = (0.5, 0.8, 0.9, 0.95)
#: Variant suffix of the tempered ensemble (log-linear pooling of base, LS and LC, weights fitted on val).
TEMPERED_SUFFIX: Final[str] = "+LS+LC (tempered)"
#: Suffix of the point-predictor baseline: a geodesic cap around the base model's own top-1.
CAP_SUFFIX: Final[str] = " cap"

# --- training image cache (geoens.models.imagecache) -------------------------------------------------------
#: ``train.image_cache: auto`` caches decoded training images only when their longer side is at most this.
IMAGE_CACHE_MAX_SIDE: Final[int] = 128
#: ... and when the whole ``uint8`` array takes at most this many bytes.
IMAGE_CACHE_MAX_BYTES: Final[int] = 2 * 1024**3

# --- evaluation at scale ---------------------------------------------------------------------------
#: Grids with more pixels than this are evaluated from the tiled atom index on disk (windowed reads and a
#: pixel-order file) instead of an in-memory index: 5400 x 10800 (58 M) stays in memory, 21600 x 43200
#: (933 M, 3.7 GB as int32) does not (DESIGN 10).
INDEX_IN_MEMORY_MAX_PIXELS: Final[int] = 100_000_000

# --- map explorer (geoens.reports.explorer) ----------------------------------------------------------
#: Width (pixels) of the explorer's base map and region images at most (plate carree, so half as high).
EXPLORER_REGION_WIDTH: Final[int] = 720
#: Upper bound (km^2) of the smallest area level of a region image (areas below share level 1).
EXPLORER_LEVEL_MIN_KM2: Final[float] = 1.0
#: Photos per test set with per-photo detail (regions, image) by default; the rest are summary points.
EXPLORER_SAMPLE: Final[int] = 300
#: Longer side (pixels) of the explorer's photo thumbnails.
EXPLORER_THUMB_SIDE: Final[int] = 256

# --- external predictions (bring your own geolocator, docs/byo.md) --------------------------------
#: A probability row (or weight list) whose sum is off 1 by more than this is normalised with a warning.
PROB_SUM_WARN_TOL: Final[float] = 1e-5
#: A ``cells`` probability row off 1 by more than this is an error (a float32 softmax is off < 1e-5).
PROB_SUM_ERROR_TOL: Final[float] = 1e-2
#: GeoGuessr's score of a guess ``d`` km away: ``GEOGUESSR_MAX_SCORE * exp(-d / GEOGUESSR_SCALE_KM)``.
GEOGUESSR_MAX_SCORE: Final[float] = 5000.0
GEOGUESSR_SCALE_KM: Final[float] = 1492.7
